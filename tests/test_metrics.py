"""What a run writes for TensorBoard (MetricWriter), read back with TensorBoard's own reader from
real event files; the parameter table and XLA's FLOPs of LeNet-5 against its arithmetic."""
import json

import pytest
from flax import traverse_util
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from resnet_jax import config as config_lib
from resnet_jax import metrics, models


def read_events(logdir):
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE})
  return accumulator.Reload()


@pytest.fixture
def written(tmp_path):
  config = config_lib.base_config()
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write_config(config)
  writer.write_text('parameters', 'c1  156\nc3  2,416')
  writer.write(1, {'train/loss': 2.5})
  writer.write(2, {'train/loss': 1.25, 'eval/accuracy': 0.5})
  writer.close()
  return tmp_path, config


def test_scalars_config_and_hparams_share_one_run(written):
  logdir, _ = written
  # add_hparams' default would put the HParams in a sub-run, apart from the scalars they rate.
  assert [p.name for p in logdir.iterdir() if p.is_dir()] == []
  assert len(list(logdir.glob('events.out.tfevents.*'))) == 1
  events = read_events(logdir)
  assert [(e.step, e.value) for e in events.Scalars('train/loss')] == [(1, 2.5), (2, 1.25)]
  assert [(e.step, e.value) for e in events.Scalars('eval/accuracy')] == [(2, 0.5)]
  assert metrics.read_metrics(str(logdir)) == {1: {'train/loss': 2.5},
                                               2: {'train/loss': 1.25, 'eval/accuracy': 0.5}}


def text_of(events, tag):
  [tensor_tag] = [t for t in events.Tags()['tensors'] if t.startswith(tag + '/')]
  [event] = events.Tensors(tensor_tag)
  return event.tensor_proto.string_val[0].decode()


def test_the_config_is_json_in_a_code_block(written):
  logdir, config = written
  text = text_of(read_events(logdir), 'config')
  assert text.startswith('```\n') and text.endswith('\n```')
  assert json.loads(text[4:-4])['optimizer']['momentum'] == 0.9
  assert json.loads(text[4:-4])['schedule']['boundaries'] == list(config.schedule.boundaries)
  assert text_of(read_events(logdir), 'parameters') == '```\nc1  156\nc3  2,416\n```'


def test_hparams_hold_every_field_dotted_and_declare_the_metrics(written):
  logdir, config = written
  content = read_events(logdir).PluginTagToContent('hparams')
  data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
  start = data['_hparams_/session_start_info'].session_start_info.hparams
  assert start['optimizer.momentum'].number_value == 0.9
  assert start['optimizer.nesterov'].bool_value is False
  assert start['model.name'].string_value == config.model.name
  assert start['schedule.boundaries'].string_value == '(30.0, 60.0, 80.0)'
  assert start['model.act'].string_value == 'None'
  assert len(start) == len(traverse_util.flatten_dict(config.to_dict()))  # None ones too
  experiment = data['_hparams_/experiment'].experiment
  assert [m.name.tag for m in experiment.metric_infos] == ['eval/accuracy', 'eval/loss',
                                                           'train/loss']
  assert sorted(h.name for h in experiment.hparam_infos) == sorted(start)


def lenet5_params():
  model = models.create_model('lenet5', num_classes=10)
  return models.abstract_variables(model, (32, 32, 1))['params']


def test_parameter_overview_of_lenet5():
  table = metrics.parameter_overview(lenet5_params(), flops_per_image=845_862)
  lines = table.splitlines()
  rows = {line.split()[0]: line for line in lines[1:-2]}
  assert list(rows) == ['c1', 'c3', 'c5', 'f6', 'output']
  assert rows['c1'].split()[1] == '156' and 'kernel (5, 5, 1, 6), bias (6,)' in rows['c1']
  assert rows['c5'].split()[1] == '48,120'  # 5*5*16*120 + 120
  total = int(lines[-2].split()[1].replace(',', ''))
  assert total == models.count_params('lenet5') == sum(
      int(row.split()[1].replace(',', '')) for row in rows.values())
  # LeCun et al. 1998's 60,000, less the pools' 44 coefficients, plus full C3 (900) and a
  # dense output (850): see models/lenet.py.
  assert total == models.model_spec('lenet5')['paper_params'] - 44 + 900 + 850
  assert lines[-2].endswith(f'{total * 4 / 1e6:.2f} MB at float32')
  assert lines[-1] == 'forward FLOPs per image: 0.00085 GFLOPs (XLA cost analysis)'


def test_parameter_overview_cuts_long_rows():
  model = models.create_model('resnet50', num_classes=1000)
  table = metrics.parameter_overview(models.abstract_variables(model, (224, 224, 3))['params'])
  assert max(map(len, table.splitlines())) <= 100
  block = next(line for line in table.splitlines() if line.startswith('stage3_block0'))
  # The largest weights come first, the batch-norm vectors fall under the '...'.
  assert 'conv2/kernel (3, 3, 512, 512)' in block and block.endswith(', ...')


def test_lenet5_forward_flops_are_its_arithmetic():
  # Multiply-adds, 2 FLOPs each: C1 28*28*6*25 + C3 10*10*16*150 + C5 120*400 + F6 120*84
  # + output 84*10 = 416,520. Bias adds: 28*28*6 + 10*10*16 + 120 + 84 + 10 = 6,518. Average
  # pools, 3 adds and a divide per output: 4 * (14*14*6 + 5*5*16) = 6,304. tanh is counted
  # apart (transcendentals). 2 * 416,520 + 6,518 + 6,304 = 845,862.
  model = models.create_model('lenet5', num_classes=10)
  flops = models.forward_flops(model, (32, 32, 1))
  assert 2 * 416_520 <= flops <= 845_862 * 1.01
  lowered = models.forward_flops(model, (32, 32, 1), batch=4, compiled=False)
  assert lowered == pytest.approx(4 * flops, rel=0.05)
