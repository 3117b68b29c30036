"""Human-readable store summary and integrity check (used by ``w2s inspect``)."""
from __future__ import annotations

from store.attributes import check_provenance
from store.soft_label_store import SoftLabelStore


def summarize(path: str) -> str:
    """A few lines: shape, status, teacher, dataset, view policy, accuracy per view."""
    s = SoftLabelStore.open(path)
    a = s.attrs
    check_provenance(path, a)
    done = int(s.done_mask().sum())
    total = s.done_mask().size
    lines = [f"store {path}",
             f"  status {a.get('status')}  samples {s.num_samples}  views {s.num_views}  classes {s.num_classes}"
             f"  chunks {done}/{total}  layout {s.layout}" + (f" (k={a['top_k']})" if s.layout == "top_k" else ""),
             f"  teacher {a['teacher']['model']}  sha256 {a['teacher']['sha256'][:16]}",
             f"  dataset {a['dataset']['source']}/{a['dataset']['split']}  fingerprint {a['dataset']['fingerprint'][:16]}",
             f"  views {a['view_policy']}"]
    if "teacher_accuracy" in a:
        lines.append("  teacher accuracy per view " + " ".join(f"{x:.4f}" for x in a["teacher_accuracy"]))
    return "\n".join(lines)


def verify_store(path: str) -> list[str]:
    return SoftLabelStore.open(path).verify()
