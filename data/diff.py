"""What changed in the dataset between two versions of its `.dvc` file.

A version of `data/raw` is the file list (path and md5 of each file) that its `.dvc` file
points to. Both lists are read through DVC's own file system (`dvc.api.DVCFileSystem`), from
the cache or, when missing there, the remote; nothing is checked out and no text is parsed.
Revisions are git revisions of the repository; `None` means the working tree's `.dvc` file.

Images are compared by content (md5) and labelled by their class folder:

| change | meaning |
| --- | --- |
| added | content in B that A does not have |
| removed | content in A that B does not have |
| relabelled | content in both, under other class folders (a moved file, a corrected label) |

Where a provenance record sits in the B version (a `provenance*.json`, `.jsonl` or `.parquet`
file in the folder or next to it, as label imports write), its records are returned too, and
the added images they name (by path, sha256 or md5) carry them.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections import Counter
from dataclasses import asdict, dataclass, field

from lensops.core.errors import UsageError

PROVENANCE_SUFFIXES = (".json", ".jsonl", ".parquet")


class DiffError(UsageError):
    """A revision, `.dvc` file or data version that cannot be read; the message says what to do."""


@dataclass
class DataDiff:
    rev_a: str
    rev_b: str
    n_before: int
    n_after: int
    added: list[dict] = field(default_factory=list)  # {path, label, md5[, provenance]}
    removed: list[dict] = field(default_factory=list)  # {path, label, md5}
    relabelled: list[dict] = field(default_factory=list)  # {md5, from, to, paths_before, paths_after}
    classes: list[dict] = field(default_factory=list)  # per label: counts, changes, share of the dataset
    provenance: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def _is_provenance(name: str) -> bool:
    return name.startswith("provenance") and name.endswith(PROVENANCE_SUFFIXES)


def _open_fs(root, rev: str | None):
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from dvc.scm import SCM, RevError, SCMError, resolve_rev

    try:
        if rev is not None:
            resolve_rev(SCM(str(root)), rev)
        return DVCFileSystem(str(root), rev=rev)
    except RevError:
        raise DiffError(f"unknown revision {rev!r}: give a commit, branch or tag (see `git log`)") from None
    except SCMError:
        raise DiffError(f"{root} is not a git repository: `lensops data diff` compares git revisions") from None
    except DvcException as e:
        raise DiffError(f"{root} cannot be read as a DVC repository at {rev or 'the working tree'}: {e}") from None


def listing(fs, target: str, rev_name: str) -> tuple[dict[str, str], list[str]]:
    """{path under target: md5} of the version the `.dvc` file describes, and provenance files found."""
    from dvc.exceptions import DvcException

    if not fs.exists(f"{target}.dvc"):
        raise DiffError(
            f"{target}.dvc does not exist at {rev_name}: version the folder with `dvc add {target}` "
            "and commit the .dvc file (or name a revision that has it)"
        )
    try:
        entries = fs.find(target, detail=True)
    except (DvcException, OSError) as e:
        raise DiffError(
            f"the file list of {target} at {rev_name} is in neither the DVC cache nor the remote "
            f"(`dvc fetch` or `dvc pull` it, or `dvc push` from where it was added): {e}"
        ) from None
    files, provenance = {}, []
    for path, info in entries.items():
        rel = posixpath.relpath(path, target)
        name = posixpath.basename(rel)
        md5 = (info.get("dvc_info") or {}).get("md5")
        if _is_provenance(name):
            provenance.append(path)
        elif md5 and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = md5  # tracked by the .dvc file (an untracked working-tree file has no md5)
    parent = posixpath.dirname(target)
    siblings = fs.ls(parent or "/", detail=False) if fs.isdir(parent or "/") else []
    provenance += [p for p in siblings if _is_provenance(posixpath.basename(p))]
    return files, sorted(provenance)


def _label(path: str) -> str:
    return path.split("/")[0] if "/" in path else "(no class folder)"


def _labels_of(files: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, md5 in files.items():
        out.setdefault(md5, set()).add(_label(path))
    return out


def _changes(before: dict[str, str], after: dict[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    labels_a, labels_b = _labels_of(before), _labels_of(after)
    added = [{"path": p, "label": _label(p), "md5": m} for p, m in sorted(after.items()) if m not in labels_a]
    removed = [{"path": p, "label": _label(p), "md5": m} for p, m in sorted(before.items()) if m not in labels_b]
    relabelled = []
    for md5 in sorted(set(labels_a) & set(labels_b)):
        if labels_a[md5] != labels_b[md5]:
            relabelled.append(
                {
                    "md5": md5,
                    "from": sorted(labels_a[md5]),
                    "to": sorted(labels_b[md5]),
                    "paths_before": sorted(p for p, m in before.items() if m == md5),
                    "paths_after": sorted(p for p, m in after.items() if m == md5),
                }
            )
    return added, removed, relabelled


def _per_class(before, after, added, removed, relabelled) -> list[dict]:
    count_a, count_b = Counter(map(_label, before)), Counter(map(_label, after))
    plus, minus = Counter(a["label"] for a in added), Counter(r["label"] for r in removed)
    moved_out = Counter(lbl for r in relabelled for lbl in set(r["from"]) - set(r["to"]))
    moved_in = Counter(lbl for r in relabelled for lbl in set(r["to"]) - set(r["from"]))
    total_a, total_b = max(1, len(before)), max(1, len(after))
    rows = []
    for label in sorted(set(count_a) | set(count_b)):
        share_a, share_b = count_a[label] / total_a, count_b[label] / total_b
        rows.append(
            {
                "label": label,
                "before": count_a[label],
                "after": count_b[label],
                "added": plus[label],
                "removed": minus[label],
                "relabelled_in": moved_in[label],
                "relabelled_out": moved_out[label],
                "share_before": round(share_a, 4),
                "share_after": round(share_b, 4),
                "share_change": round(share_b - share_a, 4),
            }
        )
    return rows


def read_provenance(fs, paths: list[str], limit: int = 10_000) -> list[dict]:
    """Records of every provenance file (JSON list or object, JSON lines, parquet), each with its `source`."""
    records: list[dict] = []
    for path in paths:
        try:
            with fs.open(path, "rb") as f:
                raw = f.read()
            records += [{**r, "source": path} for r in _parse_records(path, raw) if isinstance(r, dict)]
        except Exception as e:  # provenance is informative: a record that cannot be read is reported, not fatal
            records.append({"source": path, "error": f"cannot read: {type(e).__name__}: {e}"})
    return records[:limit]


def _parse_records(path: str, raw: bytes) -> list:
    if path.endswith(".parquet"):
        import pandas as pd

        return json.loads(pd.read_parquet(io.BytesIO(raw)).to_json(orient="records"))
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    data = json.loads(raw)
    if isinstance(data, dict):  # {"records": [...]}, {"images": [...]} or one record
        lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        return lists[0] if lists else [data]
    return data if isinstance(data, list) else []


def _attach(added: list[dict], records: list[dict], target: str) -> None:
    """Give each added image the provenance record that names it (by path, sha256 or md5)."""
    by_key: dict[str, dict] = {}
    for r in records:
        for key in ("path", "file", "md5", "sha256"):
            value = r.get(key)
            if isinstance(value, str):
                by_key[value.removeprefix(target + "/")] = r
    for a in added:
        record = by_key.get(a["path"]) or by_key.get(a["md5"])
        if record is not None:
            a["provenance"] = {k: v for k, v in record.items() if k not in ("path", "file")}


def diff_data(root, rev_a: str | None = "HEAD", rev_b: str | None = None, target: str = "data/raw") -> DataDiff:
    """Images added, removed and relabelled between two versions of `<target>.dvc` (None: the working tree)."""
    target = posixpath.normpath(target.replace("\\", "/")).strip("/")
    names = [rev or "the working tree" for rev in (rev_a, rev_b)]
    fs_a, fs_b = _open_fs(root, rev_a), _open_fs(root, rev_b)
    before, _ = listing(fs_a, target, names[0])
    after, provenance_files = listing(fs_b, target, names[1])
    added, removed, relabelled = _changes(before, after)
    records = read_provenance(fs_b, provenance_files)
    _attach(added, records, target)
    classes = _per_class(before, after, added, removed, relabelled)
    return DataDiff(names[0], names[1], len(before), len(after), added, removed, relabelled, classes, records)
