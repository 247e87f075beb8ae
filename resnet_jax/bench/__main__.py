"""`python -m resnet_jax.bench`: the benchmark's command line (resnet_jax/bench/cli.py)."""
from resnet_jax import xla_flags
from resnet_jax.bench.cli import main

if __name__ == '__main__':
  # Here rather than in main(): the tests call main() in a process whose backends already run.
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  main()
