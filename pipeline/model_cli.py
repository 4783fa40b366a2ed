"""`crocodile model compare` (registered by crocodile.cli): the pipeline's blessing decision, offline."""
import argparse
import json

from crocodile.errors import UserError


def register(subparsers) -> None:
    from crocodile.pipeline.cli import add_blessing_arguments

    parser = subparsers.add_parser("model", help="compare exported models the way the pipeline's gate does")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    compare = commands.add_parser(
        "compare", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="candidate vs baseline SavedModel on the same eval rows: per-domain paired AUC and the blessing",
        description="Scores the same eval rows with both SavedModels' serving_default and applies the\n"
                    "pipeline's blessing rule (crocodile.pipeline.model_compare). Exit status 0 either way;\n"
                    "the decision is in the output (--json: top-level 'blessed' and 'reasons').")
    compare.add_argument("--baseline", required=True,
                         help="SavedModel folder, or a base path whose newest integer version is used")
    compare.add_argument("--candidate", required=True, help="SavedModel folder or base path")
    compare.add_argument("--data", required=True,
                         help="data folder (DIR/logs/*.csv|*.tfrecord.gz: every row is an eval row), or an "
                              "ExampleGen Examples artifact folder (its Split-eval rows: the pipeline's eval split)")
    compare.add_argument("--domains", type=int, default=None,
                         help="number of domains expected (absent ones are insufficient evidence); "
                              "default: the data folder's feature config, else the domains present")
    compare.add_argument("--json", action="store_true", help="print the full decision as JSON")
    add_blessing_arguments(compare)
    compare.set_defaults(handler=run_compare)


def run_compare(args) -> int:
    import os

    from crocodile.pipeline import data_source, model_compare
    from crocodile.pipeline.cli import blessing_rule

    rule = blessing_rule(args)
    candidate = model_compare.saved_model_dir(args.candidate)
    baseline = model_compare.saved_model_dir(args.baseline)
    rows = model_compare.data_folder_rows(args.data)
    if args.domains is not None:
        if args.domains < 1:
            raise UserError("--domains must be >= 1")
        domain_ids = list(range(args.domains))
    elif os.path.exists(os.path.join(args.data, data_source.FEATURE_CONFIG_FILENAME)):
        domain_ids = list(range(data_source.load_feature_config(args.data).num_domains))
    else:
        domain_ids = None
    decision = model_compare.compare_models(rows, candidate, baseline, rule, domain_ids)
    if args.json:
        print(json.dumps(decision, indent=1, default=float))
    else:
        print(f"candidate {candidate}\nbaseline  {baseline}")
        print(model_compare.describe(decision))
    return 0
