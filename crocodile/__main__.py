from crocodile.cli import run

run()
