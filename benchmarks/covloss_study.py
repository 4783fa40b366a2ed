"""Covariance-loss study (issue 10): Crocodile over covariance rows x lambda x seeds, scored on
VALIDATION rows only (the eval rows stay untouched for the final comparison), with the
diagnostics that show whether the loss works by disentangling or by silencing experts:
dead-unit share, per-unit output std and IA per expert, and the cross-expert covariance on
every validation row (the quantity the loss is meant to lower).

Prints JSON; writes OUT/study.json, OUT/study.md (the whole grid), OUT/study.png and
OUT/runs.jsonl. A re-run with the same OUT resumes: finished (setting, seed) runs are kept.
Settings run interleaved (seed 0: every setting, seed 1: ...) so load drift hits all alike.

    python benchmarks/covloss_study.py --data DIR --out OUT --rows 32,256,0 \\
        --lambdas 0,0.01,0.1,1 --seeds 3 --epochs 3 [--variants '{"name": {...}}']

rows 0 = the whole batch. lambda 0 is one setting (rows do not matter). `--variants` adds
named settings (hparams overrides), e.g. a warm-up, a variance hinge or stratified rows.
Uses benchmarks/quality_benchmark.py's transform, split and train_one.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from crocodile.errors import UserError

log = logging.getLogger("crocodile.benchmark.covloss_study")

# Paired differences are against the default before this study: the paper's 32 rows, lambda = 1.
REFERENCE_SETTING = {"disentangle_rows": 32, "disentangle_weight": 1.0}


def _number(text: str) -> str:
    return f"{float(text):g}"


def grid(rows: List[int], lambdas: List[float], variants: Optional[Dict[str, dict]] = None) -> Dict[str, dict]:
    """Setting name -> hparams overrides. lambda = 0 is one setting whatever the rows."""
    settings = {}
    for lam in lambdas:
        if lam == 0:
            settings["lambda=0"] = {"disentangle_weight": 0.0}
            continue
        for r in rows:
            settings[f"rows={r or 'batch'} lambda={_number(lam)}"] = {"disentangle_rows": r, "disentangle_weight": lam}
    for name, overrides in (variants or {}).items():
        if name in settings:
            raise UserError(f"--variants: {name!r} is already a grid setting")
        settings[name] = dict(overrides)
    return settings


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summarise(runs: List[dict], settings: Dict[str, dict], reference: Optional[str]) -> dict:
    """Per setting: validation metrics (mean and t interval over seeds), per-domain means,
    expert diagnostics, and paired differences vs `reference` over the seeds both have."""
    from crocodile.benchmarks.benchmark_report import mean_and_interval

    by_setting = {name: {r["seed"]: r for r in runs if r["setting"] == name} for name in settings}
    domains = sorted({d for r in runs for d in r["metrics"]["domains"]}, key=int)
    summary = {}
    for name, seeds in by_setting.items():
        if not seeds:
            continue
        experts = [r["diagnostics"]["experts"] for r in seeds.values() if r["diagnostics"]["experts"]]
        item = [r["diagnostics"]["information_abundance"]["overall"].get("item_id") for r in seeds.values()]
        entry = {
            "overrides": settings[name], "seeds": sorted(seeds),
            "auc": mean_and_interval([r["metrics"]["overall"]["auc"] for r in seeds.values()]),
            "gauc": mean_and_interval([r["metrics"]["overall"]["gauc"] for r in seeds.values()]),
            "domains": {d: {m: _mean([r["metrics"]["domains"].get(d, {}).get(m) for r in seeds.values()])
                            for m in ("auc", "gauc")} for d in domains},
            "dead_fraction": _mean([np.mean(e["dead_fraction"]) for e in experts]),
            "dead_fraction_range": ([float(min(min(e["dead_fraction"]) for e in experts)),
                                     float(max(max(e["dead_fraction"]) for e in experts))] if experts else None),
            "unit_std": _mean([np.mean(e["unit_std"]) for e in experts]),
            "expert_ia": _mean([np.mean(e["information_abundance"]) for e in experts]),
            "validation_covariance": _mean([e["cross_expert_covariance"] for e in experts]),
            "item_ia": _mean(item),
            "train_seconds": _mean([r["train_seconds"] for r in seeds.values()]),
            "epochs_run": [r["epochs_run"] for r in seeds.values()],
        }
        if reference and name != reference and by_setting.get(reference):
            ref = by_setting[reference]
            common = sorted(set(seeds) & set(ref))
            entry["paired_vs_reference"] = {}
            for scope in ["overall"] + domains:
                entry["paired_vs_reference"][scope] = {}
                for metric in ("auc", "gauc"):
                    def value(run):
                        block = run["metrics"]["overall"] if scope == "overall" else run["metrics"]["domains"][scope]
                        return block.get(metric, float("nan"))
                    entry["paired_vs_reference"][scope][metric] = mean_and_interval(
                        [value(seeds[s]) - value(ref[s]) for s in common])
        summary[name] = entry
    return summary


def best_setting(summary: dict) -> Optional[str]:
    """Highest mean validation AUC over seeds (gAUC breaks ties); only settings with the
    most seeds completed compete, so a half-finished setting cannot win on fewer seeds."""
    if not summary:
        return None
    most = max(len(s["seeds"]) for s in summary.values())
    complete = {k: v for k, v in summary.items() if len(v["seeds"]) == most}
    return max(complete, key=lambda k: (complete[k]["auc"]["mean"], complete[k]["gauc"]["mean"]))


def _fmt(x, digits=4):
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _interval(stat):
    if not stat or stat.get("n", 0) < 2:
        return "-"
    return f"{stat['mean']:+.4f} [{stat['ci'][0]:+.4f}, {stat['ci'][1]:+.4f}]"


def markdown(report: dict) -> str:
    summary, reference, best = report["summary"], report["reference"], report["best"]
    domains = sorted({d for s in summary.values() for d in s["domains"]}, key=int)
    lines = [f"Validation rows only ({report['data']['rows_validation']:,} rows; fit {report['data']['rows_fit']:,}); "
             f"mean over seeds {report['seeds_done']}; paired differences vs `{reference}` with 95% t intervals "
             f"over seeds. dead = share of expert units 0 on every validation row; unit std = mean per-unit std; "
             f"val cov = cross-expert covariance (DESIGN 5.3) on every validation row.", "",
             "| setting | val AUC | val gAUC | " + " | ".join(f"AUC d{d}" for d in domains)
             + " | dead (min-max) | unit std | expert IA | val cov | item IA | ΔAUC vs ref | ΔgAUC vs ref | train s |",
             "|---" * (13 + len(domains)) + "|"]
    for name, s in summary.items():
        dead = s["dead_fraction_range"]
        paired = s.get("paired_vs_reference", {}).get("overall", {})
        label = f"**{name}**" if name == best else name
        lines.append(
            f"| {label} | {_fmt(s['auc']['mean'])} ± {_fmt(s['auc']['std'])} | {_fmt(s['gauc']['mean'])} ± "
            f"{_fmt(s['gauc']['std'])} | " + " | ".join(_fmt(s["domains"][d]["auc"]) for d in domains)
            + f" | {_fmt(s['dead_fraction'], 2)} ({_fmt(dead[0], 2)}-{_fmt(dead[1], 2)}) | {_fmt(s['unit_std'], 3)} | "
              f"{_fmt(s['expert_ia'], 1)} | {_fmt(s['validation_covariance'], 4)} | {_fmt(s['item_ia'], 2)} | "
              f"{_interval(paired.get('auc'))} | {_interval(paired.get('gauc'))} | {s['train_seconds']:.0f} |"
            if dead else f"| {label} | (no expert diagnostics) |")
    lines += ["", f"Best on validation (mean AUC over seeds): **{best}**.", ""]
    lines += _paired_table(summary, domains, f"vs the reference `{reference}`")
    if report.get("paired_vs_best"):
        lines += [""] + _paired_table({n: {"paired_vs_reference": p} for n, p in report["paired_vs_best"].items() if p},
                                      domains, f"vs the best setting `{best}`")
    return "\n".join(lines) + "\n"


def _paired_table(summary: dict, domains: List[str], against: str) -> List[str]:
    lines = [f"Overall and per-domain paired ΔAUC / ΔgAUC {against} (95% t intervals over seeds):", "",
             "| setting | overall ΔAUC | overall ΔgAUC | " + " | ".join(f"d{d} ΔAUC | d{d} ΔgAUC" for d in domains) + " |",
             "|---" * (3 + 2 * len(domains)) + "|"]
    for name, s in summary.items():
        if s.get("paired_vs_reference"):
            cells = [f"{_interval(s['paired_vs_reference'][d]['auc'])} | {_interval(s['paired_vs_reference'][d]['gauc'])}"
                     for d in ["overall"] + domains]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot(report: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    summary = report["summary"]
    panels = (("auc", "validation AUC"), ("dead_fraction", "dead expert units"),
              ("validation_covariance", "cross-expert covariance (val)"), ("unit_std", "per-unit output std"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    rows = sorted({s["overrides"].get("disentangle_rows") for s in summary.values()
                   if s["overrides"].get("disentangle_weight", 0) > 0 and set(s["overrides"]) == set(REFERENCE_SETTING)},
                  key=lambda r: r or 10 ** 9)
    zero = summary.get("lambda=0")
    for ax, (key, title) in zip(axes, panels):
        for r in rows:
            points = sorted((s["overrides"]["disentangle_weight"], s[key]["mean"] if key == "auc" else s[key])
                            for s in summary.values()
                            if s["overrides"].get("disentangle_rows") == r and set(s["overrides"]) == set(REFERENCE_SETTING))
            if zero:
                points = [(0.0, zero[key]["mean"] if key == "auc" else zero[key])] + points
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"rows {r or 'batch'}")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("lambda")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load_or_prepare(data_dir: str, out_dir: str, max_rows: Optional[int]):
    """The quality benchmark's transform and split, cached in OUT/arrays.npz for resumes."""
    from crocodile.benchmarks.quality_benchmark import prepare_data
    from crocodile.model.features import FeatureConfig
    cache, meta_path = os.path.join(out_dir, "arrays.npz"), os.path.join(out_dir, "arrays.json")
    if os.path.exists(cache) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["data_dir"] == os.path.abspath(data_dir) and meta["max_rows"] == max_rows:
            stored = np.load(cache, allow_pickle=True)
            data = tuple({k.split("/", 1)[1]: stored[k] for k in stored.files if k.startswith(part + "/")}
                         for part in ("fit", "validation", "eval"))
            return FeatureConfig.load(os.path.join(data_dir, "feature_config.json")), meta["vocab"], data, 0.0
    feature_config, vocab, data, _, seconds = prepare_data(data_dir, out_dir, max_rows)
    np.savez(cache, **{f"{part}/{k}": v for part, arrays in zip(("fit", "validation", "eval"), data)
                       for k, v in arrays.items()})
    with open(meta_path, "w") as f:
        json.dump({"data_dir": os.path.abspath(data_dir), "max_rows": max_rows,
                   "vocab": {k: int(v) for k, v in vocab.items()}}, f)
    return feature_config, vocab, data, seconds


def run(data_dir: str, out_dir: str, rows: List[int], lambdas: List[float], seeds: int, epochs: int,
        max_rows: Optional[int] = None, hparams: Optional[dict] = None,
        variants: Optional[Dict[str, dict]] = None) -> dict:
    from crocodile.benchmarks.benchmark_report import _clean, read_jsonl
    from crocodile.benchmarks.quality_benchmark import train_one
    from crocodile.model.hparams import resolve

    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    if any(r == 1 or r < 0 for r in rows):
        raise UserError("--rows: each must be 0 (whole batch) or >= 2")
    settings = grid(rows, lambdas, variants)
    for name, overrides in settings.items():
        try:
            resolve("crocodile", {**(hparams or {}), **overrides})
        except (TypeError, ValueError) as error:
            raise UserError(f"setting {name!r}: {error}") from error
    reference = next((n for n, o in settings.items() if o == REFERENCE_SETTING), None)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    feature_config, vocab, data, transform_seconds = _load_or_prepare(data_dir, out_dir, max_rows)
    runs_path = os.path.join(out_dir, "runs.jsonl")
    runs = [r for r in read_jsonl(runs_path) if r.get("setting") in settings]
    done = {(r["setting"], r["seed"]) for r in runs}
    fit_arrays, val_arrays, _ = data
    report = {"benchmark": "covloss_study", "scored": "validation",
              "data": {"dir": os.path.abspath(data_dir), "rows_fit": len(fit_arrays["click"]),
                       "rows_validation": len(val_arrays["click"]),
                       "validation_rows_by_domain": {str(d): int(c) for d, c in zip(
                           *np.unique(val_arrays["domain_id_xf"], return_counts=True))}},
              "settings": settings, "hparams_overrides": hparams or {}, "epochs": epochs, "seeds": seeds,
              "reference": reference, "transform_seconds": transform_seconds,
              "load_average_at_start": os.getloadavg()[0]}
    for seed in range(seeds):
        for name, overrides in settings.items():
            if (name, seed) in done:
                continue
            log.info("seed %d/%d: %s", seed + 1, seeds, name)
            result = train_one("crocodile", seed, data, feature_config, vocab, {**(hparams or {}), **overrides},
                               epochs, scored="validation", diagnostic_rows=None)
            result.pop("eval_probabilities", None)          # validation predictions: not kept
            result["setting"] = name
            log.info("  val AUC %.4f gAUC %.4f, dead %.2f, val cov %.4f in %.0fs", result["metrics"]["overall"]["auc"],
                     result["metrics"]["overall"]["gauc"], np.mean(result["diagnostics"]["experts"]["dead_fraction"]),
                     result["diagnostics"]["experts"]["cross_expert_covariance"], result["train_seconds"])
            runs.append(result)
            with open(runs_path, "a") as f:
                f.write(json.dumps(_clean(result)) + "\n")
        report["seeds_done"] = sorted({r["seed"] for r in runs})
        report["summary"] = summarise(runs, settings, reference)
        report["best"] = best_setting(report["summary"])
        report["paired_vs_best"] = {name: entry.get("paired_vs_reference")
                                    for name, entry in summarise(runs, settings, report["best"]).items()}
        report["wall_seconds_this_invocation"] = time.perf_counter() - start
        report["load_average_at_end"] = os.getloadavg()[0]
        report["plot"] = plot(report, os.path.join(out_dir, "study.png"))
        with open(os.path.join(out_dir, "study.json"), "w") as f:
            json.dump(_clean(report), f, indent=1)
        with open(os.path.join(out_dir, "study.md"), "w") as f:
            f.write(markdown(report))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data folder from `crocodile data generate`")
    parser.add_argument("--out", required=True, help="output folder (resumes if it holds runs.jsonl)")
    parser.add_argument("--rows", default="32,256,0", help="covariance rows per step; 0 = whole batch (default: %(default)s)")
    parser.add_argument("--lambdas", default="0,0.01,0.1,1", help="lambda grid (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--hparams", default=None, help="JSON overrides applied to every setting")
    parser.add_argument("--variants", default=None, help='JSON {"name": {overrides}} of extra settings')
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        rows = [int(x) for x in args.rows.split(",") if x.strip()]
        lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
        hparams = json.loads(args.hparams) if args.hparams else None
        variants = json.loads(args.variants) if args.variants else None
    except ValueError as error:
        print(f"covloss_study: error: {error}", file=sys.stderr)
        return 2
    try:
        report = run(args.data, args.out, rows, lambdas, args.seeds, args.epochs, args.max_rows, hparams, variants)
    except UserError as error:
        print(f"covloss_study: error: {error}", file=sys.stderr)
        return 2
    from crocodile.benchmarks.benchmark_report import _clean
    print(json.dumps(_clean({k: report[k] for k in ("best", "reference", "seeds_done", "summary")}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
