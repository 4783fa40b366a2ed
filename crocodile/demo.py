"""`crocodile demo`: the main job end to end on embedded defaults."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on embedded defaults")
    parser.add_argument("--out", default="demo_out", help="folder for every output of the demo")
    parser.set_defaults(handler=run)


def run(args) -> int:
    raise NotImplementedError
