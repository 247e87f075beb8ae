"""Speed, memory and complexity of the models, as tables: `python -m resnet_jax.bench --help`
(or `python -m resnet_jax.benchmark`, the same command line).

  complexity  forward FLOPs from XLA's cost analysis; the rows of the zoo table (`--zoo`)
  step        our train step or eval forward timed, with XLA's costs, the matmul peak (MFU) and
              the torch twin's step timed alternating with ours
  profile     where the time of our step goes, per compiled instruction (`--profile`)
  convs       each distinct convolution of a model timed alone, torch's alongside (`--convs`)
  pipeline    the host input pipeline on synthetic or given JPEGs (`--mode pipeline`)
  cli         the command line: flags, the tables, JSON lines
"""
