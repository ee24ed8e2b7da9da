"""python -m ablate.collect <sweep_dir> [key=value ...]: same as `ablate collect`."""

from ablate.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["collect", *__import__("sys").argv[1:]]))
