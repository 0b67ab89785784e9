"""`PYTHONPATH=src python -m benchmarks.gpucheck --archive ... --md5 ... --out DIR`."""
from benchmarks.gpucheck.check import main
from vitlens.errors import run_main

run_main(main)
