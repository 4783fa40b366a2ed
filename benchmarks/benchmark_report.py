"""Summary statistics, Markdown table and PNG plots of the quality benchmark."""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

METRICS = ("auc", "gauc")
CEILING = "ceiling (p_relevance)"


def _clean(value):
    """JSON-safe: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_jsonl(path: str) -> List[dict]:
    """The records of a JSON-lines file that runs append to one at a time ([] when absent).

    A last line that does not parse is a run killed while writing it and is left out (the
    run is done again); any other bad line is an error naming the file and line.
    """
    from crocodile.errors import UserError

    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise UserError(f"{path}: line {number} is not JSON ({error.msg})") from error
    return records


def mean_and_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample std and a t confidence interval of the mean (NaN bounds for n < 2)."""
    from scipy import stats
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci": [float("nan")] * 2, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": float("nan"), "ci": [float("nan")] * 2, "n": 1}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci": [mean - half, mean + half], "n": n}


def _values(runs: List[dict], model: str, scope: Optional[str], metric: str) -> Dict[int, float]:
    """seed -> metric of `model`, overall (scope None) or in domain `scope`."""
    out = {}
    for run in runs:
        if run["model"] != model:
            continue
        block = run["metrics"]["overall"] if scope is None else run["metrics"]["domains"].get(scope, {})
        out[run["seed"]] = block.get(metric, float("nan"))
    return out


def _domains(runs: List[dict]) -> List[str]:
    return sorted({d for run in runs for d in run["metrics"]["domains"]}, key=int)


def summarise(runs: List[dict], models: Sequence[str], ladder: Optional[dict]) -> dict:
    """Per model: mean and t-interval over seeds of each metric, epoch-cap hits, parameters.

    Paired model-vs-reference differences are in the report's "paired" block
    (benchmarks/paired_analysis.py), which also accounts for the eval rows' noise.
    """
    scopes = [None] + _domains(runs)
    summary = {"models": {}, "training": {}, "diagnostics": {}}
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        summary["models"][model] = {
            ("overall" if s is None else s): {m: mean_and_interval(list(_values(runs, model, s, m).values()))
                                              for m in METRICS} for s in scopes}
        summary["training"][model] = {
            "runs": len(mine), "hit_epoch_cap": sum(bool(r.get("hit_epoch_cap")) for r in mine),
            "epochs_run": [r.get("epochs_run") for r in mine],
            "parameters": mine[0].get("parameters") if mine else None,
            "train_seconds_median": float(np.median([r["train_seconds"] for r in mine])) if mine else None}
        summary["diagnostics"][model] = _diagnostics_summary(mine)
    return summary


def _diagnostics_summary(runs: List[dict]) -> dict:
    """Means over seeds of the item table's IA and the experts' statistics."""
    def mean(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")
    ia = [r["diagnostics"]["information_abundance"] for r in runs]
    out = {"item_ia_overall": mean([d["overall"].get("item_id", float("nan")) for d in ia]),
           "user_ia_overall": mean([d["overall"].get("user_id", float("nan")) for d in ia]),
           "num_embedding_sets": ia[0]["num_embedding_sets"] if ia else None}
    if ia and "item_by_domain" in ia[0]:
        out["item_ia_by_domain"] = {s: mean([d["item_by_domain"][s] for d in ia]) for s in ia[0]["item_by_domain"]}
        out["item_ia_by_frequency"] = {g: mean([d["item_by_frequency"][g] for d in ia]) for g in ia[0]["item_by_frequency"]}
    experts = [r["diagnostics"]["experts"] for r in runs if r["diagnostics"]["experts"]]
    if experts:
        out["expert_mean"] = np.mean([e["mean"] for e in experts], axis=0).tolist()
        out["expert_std"] = np.mean([e["std"] for e in experts], axis=0).tolist()
        out["expert_dead_fraction"] = np.mean([e["dead_fraction"] for e in experts], axis=0).tolist()
    return out


def _fmt(stat: dict, digits: int = 4) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and math.isfinite(std) else "")


def _cell(entry: dict) -> str:
    if not entry or entry.get("diff") is None or not math.isfinite(entry["diff"]):
        return "n/a"
    lo, hi = entry["ci"]
    mark = {"better": " **+**", "worse": " **−**"}.get(entry.get("verdict"), "")
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and math.isfinite(lo) else ""
    return f"{entry['diff']:+.4f}{ci}{mark}"


def _domain_table(title: str, domains: List[str]) -> List[str]:
    """Heading and header rows of a table with an overall column and one column per domain."""
    return [title, "", "| model | overall | " + " | ".join(f"domain {d}" for d in domains) + " |",
            "|---|---|" + "---|" * len(domains)]


def markdown(report: dict) -> str:
    summary, ladder, data = report["summary"], report.get("ladder") or {}, report["data"]
    settings = report["settings"]
    domains = sorted(data["eval_rows_by_domain"], key=int)
    clicks = data.get("eval_clicks_by_domain", {})
    lines = [f"# Offline quality benchmark", "",
             f"Data: {data['dir']}; fit {data['rows_fit']:,} / validation {data['rows_validation']:,} / "
             f"eval {data['rows_eval']:,} rows; eval rows (clicks) per domain "
             + ", ".join(f"{d}: {data['eval_rows_by_domain'][d]:,}"
                         + (f" ({clicks[d]:,})" if d in clicks else "") for d in domains)
             + f". Budget: {settings.get('budget') or 'custom'}; seeds {report.get('seeds_completed', settings['seeds'])}"
             f" of {settings['seeds']}; epoch cap {settings.get('epoch_cap', settings.get('epochs'))}; "
             f"tuning: {settings.get('tuning', 'n/a')}. Tables show mean ± std over seeds.", ""]
    for metric in METRICS:
        lines += _domain_table(f"## {metric.upper()} (eval split)", domains)
        for name, result in ladder.items():
            lines.append(f"| *{name}* | {result['overall'][metric]:.4f} | "
                         + " | ".join(f"{result['domains'][d][metric]:.4f}" if d in result["domains"] else "n/a"
                                      for d in domains) + " |")
        for model, scopes in summary["models"].items():
            lines.append(f"| {model} | {_fmt(scopes['overall'][metric])} | "
                         + " | ".join(_fmt(scopes[d][metric]) if d in scopes else "n/a" for d in domains) + " |")
        lines.append("")
    if ladder:
        lines += [f"Italic rows are the ladder on the same eval rows; the ceiling for a model that does not see "
                  f"position is `{CEILING}`; the p_click oracle also knows the position effect.", ""]
    paired = report.get("paired") or {}
    if paired.get("models"):
        ref = paired["reference"]
        lines += [f"## Paired difference: {ref} − model", "",
                  f"Mean over seeds of the per-seed difference on the same eval rows, 95% interval from the seeds' "
                  f"spread and the eval rows' sampling noise (user-clustered); **+** / **−**: {ref} significantly "
                  f"better / worse (per domain: Holm across domains), otherwise a tie.", ""]
        for metric in METRICS:
            lines += _domain_table(f"### {metric.upper()}", domains)
            for model, per_metric in paired["models"].items():
                scopes = per_metric.get(metric, {})
                lines.append(f"| {model} | {_cell(scopes.get('overall'))} | "
                             + " | ".join(_cell(scopes.get(d)) for d in domains) + " |")
            lines.append("")
    training = summary.get("training") or {}
    if training:
        lines += ["## Training", "", "| model | parameters | runs | hit the epoch cap | epochs run | median train s |",
                  "|---|---|---|---|---|---|"]
        for model, t in training.items():
            lines.append(f"| {model} | {t['parameters'] or 0:,} | {t['runs']} | {t['hit_epoch_cap']} | "
                         f"{', '.join(str(e) for e in t['epochs_run'])} | {t['train_seconds_median'] or 0:.0f} |")
        lines.append("")
    lines += ["## Diagnostics (means over seeds)", "",
              "IA = information abundance of the item embedding (sum / max singular value, mean over embedding sets); "
              "dead = share of expert output units that are 0 on every one of 8,192 eval rows.", "",
              "| model | item IA | item IA head / torso / tail | item IA per domain | expert std | dead units |",
              "|---|---|---|---|---|---|"]
    for model, diag in summary["diagnostics"].items():
        freq = diag.get("item_ia_by_frequency", {})
        by_domain = diag.get("item_ia_by_domain", {})
        std = diag.get("expert_std")
        dead = diag.get("expert_dead_fraction")
        lines.append(
            f"| {model} | {diag['item_ia_overall']:.2f} | "
            + " / ".join(f"{freq[g]:.2f}" for g in ("head", "torso", "tail") if g in freq) + " | "
            + ", ".join(f"{by_domain[d]:.2f}" for d in sorted(by_domain, key=int)) + " | "
            + (", ".join(f"{x:.3f}" for x in std) if std else "-") + " | "
            + (", ".join(f"{x:.2f}" for x in dead) if dead else "-") + " |")
    lines += ["", f"Transform {report['transform_seconds']:.0f} s; total {report.get('total_seconds', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def plot(report: dict, out_dir: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    summary, ceiling = report["summary"], (report.get("ladder") or {}).get(CEILING)
    domains = sorted(report["data"]["eval_rows_by_domain"], key=int)
    scopes = ["overall"] + domains
    models = list(summary["models"])
    paths = []
    for metric in METRICS:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            means = [summary["models"][model].get(s, {}).get(metric, {}).get("mean", np.nan) for s in scopes]
            stds = [summary["models"][model].get(s, {}).get(metric, {}).get("std", np.nan) for s in scopes]
            ax.bar(np.arange(len(scopes)) + i * width, means, width, yerr=np.nan_to_num(stds), label=model, capsize=2)
        if ceiling:
            values = [ceiling["overall"][metric]] + [ceiling["domains"][d][metric] for d in domains]
            ax.scatter(np.arange(len(scopes)) + 0.4 - width / 2, values, marker="_", s=900, color="black",
                       label="ceiling (p_relevance)", zorder=5)
        ax.set_xticks(np.arange(len(scopes)) + 0.4 - width / 2, ["overall"] + [f"domain {d}" for d in domains])
        ax.set_ylim(0.5, 1.0)
        ax.set_ylabel(metric.upper())
        ax.legend(fontsize=8, ncol=3)
        ax.set_title(f"{metric.upper()} per domain (mean ± std over seeds)")
        path = os.path.join(out_dir, f"quality_{metric}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paired = report.get("paired") or {}
    for metric in METRICS if paired.get("models") else ():
        fig, ax = plt.subplots(figsize=(10, 4.5))
        others = list(paired["models"])
        width = 0.8 / max(len(others), 1)
        for i, model in enumerate(others):
            entries = [paired["models"][model][metric].get(s) or {} for s in scopes]
            diffs = np.array([e.get("diff", np.nan) for e in entries], dtype=float)
            low = np.array([e.get("ci", [np.nan] * 2)[0] for e in entries], dtype=float)
            high = np.array([e.get("ci", [np.nan] * 2)[1] for e in entries], dtype=float)
            x = np.arange(len(scopes)) + i * width
            ax.errorbar(x, diffs, yerr=[np.nan_to_num(diffs - low), np.nan_to_num(high - diffs)], fmt="o",
                        capsize=3, label=f"{paired['reference']} − {model}")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(scopes)) + 0.4 - width / 2, ["overall"] + [f"domain {d}" for d in domains])
        ax.set_ylabel(f"{metric.upper()} difference")
        ax.set_title(f"Paired {metric.upper()} difference with 95% interval (seeds + eval rows)")
        ax.legend(fontsize=8, ncol=2)
        path = os.path.join(out_dir, f"paired_{metric}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in models:
        freq = summary["diagnostics"][model].get("item_ia_by_frequency")
        if freq:
            ax.plot(list(freq), list(freq.values()), marker="o", label=model)
    ax.set_ylabel("item embedding IA")
    ax.set_title("Information abundance by item-frequency group")
    ax.legend(fontsize=8)
    path = os.path.join(out_dir, "quality_information_abundance.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths + [path]


def write_report(report: dict, out_dir: str) -> None:
    report["plots"] = plot(report, out_dir)
    with open(os.path.join(out_dir, "quality.json"), "w") as f:
        json.dump(_clean(report), f, indent=1)
    with open(os.path.join(out_dir, "quality.md"), "w") as f:
        f.write(markdown(report))
