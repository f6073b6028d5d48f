"""Before/after evaluation of a fine-tuning run, through `codeparrot evaluate`'s own functions.

Both models are measured as the server runs them (the exported ONNX int8 files) on the
same held-out files and positions: perplexity, line completion at both cursor kinds
(left to right and FIM), and the perplexity on a general set that shows forgetting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.evaluate import EvaluateArgs, _json_safe, evaluate

FIM_LAYOUT = "spm"  # the layout the server uses when it prompts with FIM


def evaluation_plan(corpus: Path, general: Path, positions: int, seed: int, threads: int | None) -> dict[str, dict]:
    """name -> EvaluateArgs fields (besides the model)."""
    line = dict(task="line-completion", data=str(corpus), positions=positions, seed=seed, fim="both",
                fim_layout=FIM_LAYOUT, threads=threads)
    return {"heldout_perplexity": dict(task="perplexity", data=str(corpus), threads=threads),
            "line_random": dict(line, cursor="random"),
            "line_indent": dict(line, cursor="indent"),
            "general_perplexity": dict(task="perplexity", data=str(general), threads=threads)}


def run_evaluations(model: Path, plan: dict[str, dict], folder: Path, log=print) -> dict[str, dict]:
    """Each evaluation of `plan` on `model`, written to FOLDER/NAME.json; one already there is reused."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = {}
    for name, fields in plan.items():
        path = folder / f"{name}.json"
        if not path.is_file():
            log(f"  evaluate {folder.name}: {name.replace('_', ' ')}")
            report = _json_safe(evaluate(EvaluateArgs(model=str(model), **fields)))
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
            tmp.replace(path)
        reports[name] = json.loads(path.read_text(encoding="utf-8"))
    return reports


# (label, evaluation, path in its results, True when higher is better)
ROWS = [
    ("held-out perplexity", "heldout_perplexity", ("perplexity",), False),
    ("held-out bits per character", "heldout_perplexity", ("bits_per_char",), False),
    ("line completion ES, random cursor, left to right", "line_random", ("no_fim", "edit_similarity"), True),
    ("line completion EM, random cursor, left to right", "line_random", ("no_fim", "exact_match"), True),
    ("line completion ES, random cursor, FIM", "line_random", (f"fim_{FIM_LAYOUT}", "edit_similarity"), True),
    ("line completion ES, after the indentation, left to right", "line_indent", ("no_fim", "edit_similarity"), True),
    ("line completion ES, after the indentation, FIM", "line_indent", (f"fim_{FIM_LAYOUT}", "edit_similarity"), True),
    ("general perplexity (standard library, valid split)", "general_perplexity", ("perplexity",), False),
]


def _value(report: dict | None, path: tuple[str, ...]) -> float | None:
    node = (report or {}).get("results", {})
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    try:
        return float(node)
    except (TypeError, ValueError):
        return None


def compare(before: dict[str, dict], after: dict[str, dict]) -> list[dict]:
    """One row per metric: before, after, the change (points for scores, % for perplexities)."""
    rows = []
    for label, name, path, higher in ROWS:
        b, a = _value(before.get(name), path), _value(after.get(name), path)
        if b is None and a is None:
            continue  # e.g. FIM rows for a model without FIM tokens
        row = {"metric": label, "before": b, "after": a, "higher_is_better": higher}
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            row["change"] = a - b if higher else (100.0 * (a - b) / b if b else None)
            row["change_unit"] = "points" if higher else "%"
        rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _change(row: dict) -> str:
    if row.get("change") is None:
        return "-"
    return f"{row['change']:+.1f}" + (" %" if row["change_unit"] == "%" else "")


def format_table(rows: list[dict], before_name: str, after_name: str, markdown: bool = False) -> str:
    header = ["metric", before_name, after_name, "change"]
    body = [[r["metric"], _fmt(r["before"]), _fmt(r["after"]), _change(r)] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def write_comparison(output: Path, rows: list[dict], context: dict, before_name: str, after_name: str) -> str:
    """OUTPUT/comparison.json and comparison.md; returns the plain-text table."""
    (output / "comparison.json").write_text(json.dumps(_json_safe({**context, "rows": rows}), indent=1) + "\n",
                                            encoding="utf-8")
    notes = "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in context.items() if not isinstance(v, dict))
    md = f"# Fine-tuning: {before_name} vs {after_name}\n\n{format_table(rows, before_name, after_name, True)}\n\n{notes}\n"
    (output / "comparison.md").write_text(md, encoding="utf-8")
    return format_table(rows, before_name, after_name)
