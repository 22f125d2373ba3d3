"""The GPU check: latency tables per runtime (torch, cudagraph, and TensorRT where it imports,
else torch.compile), their validation, MDP / HALP structures chosen from random weights,
exported, and paired speed-ups against dense per runtime (torch, torch.compile, TensorRT where it
imports) in fp32 and amp, next to the published ratios.

    python tools/gpu_check.py OUT_DIR [--cpu-small]

Every figure goes to OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Without a CUDA device it
stops at once (exit 1) unless `--cpu-small` asks for the same steps on the CPU at small size (the
small config, coarse tables, few samples, torch and compile tables, the compile speed-ups of
MDP-45 only: a test of the steps, not figures to quote).
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mmdp, projects

import torch  # noqa: E402

from mmdp.fileio import atomic_write_json, atomic_write_text  # noqa: E402

# Published speed-ups over dense (MDP paper, StreamPETR R50, RTX 3090, PyTorch fp32).
PUBLISHED = {'mdp45': 1.18, 'mdp70': 1.36}
# name: (solver, latency model, share of the latency removed, scope): 'backbone' prunes the
# backbone to its table, 'whole' the whole detector to the whole-detector table.
METHODS = {'mdp45': ('mdp', 'lut_bilinear', 0.45, 'backbone'),
           'mdp50': ('mdp', 'lut_bilinear', 0.50, 'backbone'),
           'mdp70': ('mdp', 'lut_bilinear', 0.70, 'backbone'),
           'halp45': ('halp', 'lut_linear', 0.45, 'backbone'),
           'mdp45_whole': ('mdp', 'lut_bilinear', 0.45, 'whole')}
SIZES = {
    # torch.compile compiles every sampled and validated structure anew (inductor, tens of
    # seconds each): fewer of them, and compiled speed-ups of the two MDP-45 methods only. No
    # step starts after `budget_s` (set-up and the last step fill the rest of the 9 minutes of
    # one device call); how far it gets within it is unmeasured on a GPU so far.
    'full': dict(config='configs/streampetr_r50_704_dense.py',
                 whole='configs/streampetr_mdp45_whole.py', step=32, repeats=30, warmup=5,
                 samples=12, validate=20, compile_samples=4, compile_validate=6, rounds=20,
                 compiled_methods=('mdp45', 'mdp45_whole'), budget_s=420),
    # On the CPU inductor takes 15-40 s per new backbone shape: the compile speed-ups of one
    # method test that step (each method's would add minutes).
    'cpu-small': dict(config='configs/streampetr_r50_small_cpu.py',
                      whole='configs/streampetr_mdp45_whole_small_cpu.py', step=512, repeats=1,
                      warmup=0, samples=5, validate=2, compile_samples=5, compile_validate=2,
                      rounds=20, compiled_methods=('mdp45',), budget_s=None),
}
PRECISIONS = ('fp32', 'amp')  # amp: backbone and neck in fp16 on CUDA (bf16 on the CPU)


def tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(msg):
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def environment(device):
    env = dict(torch=torch.__version__, device=str(device),
               device_name=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu')
    for package in ('onnxruntime', 'tensorrt'):
        env[package] = importlib.util.find_spec(package) is not None
    return env


def table_runtimes(device, env):
    """torch, cudagraph (CUDA) and the compiled runtime: TensorRT where it imports, else
    torch.compile."""
    if device.type != 'cuda':
        return ('torch', 'compile')
    return ('torch', 'cudagraph', 'trt' if env['tensorrt'] else 'compile')


def detector_runtimes(device, env):
    """Runtimes of the paired speed-ups: torch, torch.compile, and TensorRT's two engines where
    it imports (its graphs are fp32: no amp row)."""
    return ('torch', 'compile') + (('trt',) if env['tensorrt'] and device.type == 'cuda' else ())


def random_saliency(structure, seed):
    """A random value per unit of every prunable conv and (whole detector) head part."""
    gen = torch.Generator().manual_seed(seed)
    values = {layer.name: torch.rand(layer.out_channels, generator=gen).double()
              for layer in structure.layers}
    values.update({part.name: torch.rand(part.units, generator=gen).double()
                   for part in structure.valued_parts})
    return values


def choose_and_export(name, method, size, table_path, work, device):
    """A structure chosen by `method` from random weights and random saliency, masked into a
    checkpoint and exported; returns (pruned config, pruned weights, summary)."""
    from mmdp.export import export_pruned
    from mmdp.latency import LATENCY_MODELS, LatencyTable
    from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
    from mmdp.pruning.event import build_problem, choice_from_solution
    from mmdp.runtime.detector import build_detector
    from mmdp.solvers import SOLVERS
    from mmdp.structure import StructureChoice, derive_structure
    solver, latency, ratio, scope = method
    config = size['whole' if scope == 'whole' else 'config']
    torch.manual_seed(0)
    model, cfg = build_detector(config)
    table = LatencyTable.load(table_path)
    structure = derive_structure(model, tuple(cfg.latency_input_shape),
                                 head=cfg.get('prunable_head'))
    latency_model = LATENCY_MODELS.get(latency)(table=table)
    budget = latency_model.predict(StructureChoice()) * (1 - ratio)
    problem, order = build_problem(latency_model, structure, random_saliency(structure, 0),
                                   StructureChoice(), budget, table.meta['step'])
    solution = SOLVERS.get(solver)().solve(problem)
    choice = choice_from_solution(solution, order, StructureChoice())
    PruningMasks(structure, choice).apply_(model)
    state = PruningState()
    state.update(choice, {'event': 1})
    masked = osp.join(work, f'{name}_masked.pth')
    torch.save({'meta': {}, 'state_dict': model.state_dict(), CHECKPOINT_KEY: state.to_dict()},
               masked)
    config, weights = export_pruned(config, masked, osp.join(work, name))
    return config, weights, dict(status=solution.status, budget_ms=budget,
                                 predicted_ms=latency_model.predict(choice),
                                 removed_blocks=sorted(choice.removed_blocks))


def markdown(result) -> str:
    env = result['environment']
    lines = [f"# GPU check ({env['device_name']}, torch {env['torch']}, size {result['size']})",
             '', f"Latency tables profiled in: {', '.join(result['tables'])}.",
             '', '## Latency models (validation on random structures)', '',
             '| runtime | model | MAPE % | Spearman |', '| --- | --- | --- | --- |']
    for runtime, models in result['validation'].items():
        lines += [f"| {runtime} | {m} | {r['mape']:.1f} | {r['spearman']:.3f} |"
                  for m, r in models.items()]
    lines += ['', '## Paired speed-up over dense (batch 1, six views)', '',
              '| method | runtime | precision | speed-up (median) | IQR | 5-95% | published '
              '(RTX 3090, PyTorch fp32) |', '| --- | --- | --- | --- | --- | --- | --- |']
    for name, per_runtime in result['speedups'].items():
        for key, s in per_runtime.items():
            runtime, precision = key.split('/')
            pub = PUBLISHED.get(name) if precision == 'fp32' else None
            status = result['structures'][name]['status']
            name_cell = name if status == 'optimal' else f'{name} ({status})'
            lines.append(f"| {name_cell} | {runtime} | {precision} | {s['median']:.3f}x | "
                         f"{s['p25']:.3f}-{s['p75']:.3f} | {s['p5']:.3f}-{s['p95']:.3f} | "
                         f"{f'{pub:.2f}x' if pub else '-'} |")
    lines += ['', 'A method marked other than optimal: its solver found no structure within the '
              'budget and the structure is the closest it reached.']
    lines += ['', f"Skipped: {'; '.join(result['skipped']) or 'nothing'}."]
    budget = result['budget_s']
    if result['over_budget']:
        lines += ['', f"Not started, the time budget of {budget:.0f} s being spent: "
                      f"{'; '.join(result['over_budget'])}."]
    lines += ['', f"Ran for {result.get('elapsed_s', 0):.0f} s; time budget: "
                  f"{'none' if budget is None else f'{budget:.0f} s'}."]
    return '\n'.join(lines) + '\n'


class Steps:
    """Runs the check's steps in order of priority within a time budget: once the budget is
    spent every later step is skipped and named, and the figures are written after each step,
    so a run cut short (or killed) still leaves what it measured. A step already running is not
    interrupted: the budget leaves room for the last one."""

    def __init__(self, budget_s, result, out_dir):
        self.budget_s, self.result, self.out_dir = budget_s, result, out_dir
        self.start = time.monotonic()

    def run(self, label, fn, *args):
        spent = time.monotonic() - self.start
        if self.budget_s is not None and spent >= self.budget_s:
            log(f'not started: {label} (time budget of {self.budget_s:.0f} s spent)')
            self.result['over_budget'].append(label)
            self.write()
            return
        log(f'{label} (at {spent:.0f} s)')
        fn(*args)
        self.result['elapsed_s'] = round(time.monotonic() - self.start, 1)
        self.write()

    def write(self):
        atomic_write_json(osp.join(self.out_dir, 'gpu_check.json'), self.result)
        atomic_write_text(osp.join(self.out_dir, 'gpu_check.md'), markdown(self.result))


def main(argv=None):
    parser = argparse.ArgumentParser(description='GPU check of tables, structures, speed-ups')
    parser.add_argument('out_dir')
    parser.add_argument('--cpu-small', action='store_true',
                        help='the same steps on the CPU at small size (tests the steps)')
    parser.add_argument('--budget-s', type=float, default=None,
                        help='start no step after this many seconds (default: 420 at full '
                             'size, the 9 minutes of one device call less set-up and the last '
                             'step; unlimited with --cpu-small)')
    args = parser.parse_args(argv)
    if not args.cpu_small and not torch.cuda.is_available():
        print('error: no CUDA device (torch.cuda.is_available() is False): the GPU check needs '
              'an NVIDIA GPU; --cpu-small runs its steps on the CPU at small size',
              file=sys.stderr)
        return 1
    if args.budget_s is not None and not args.budget_s >= 0:
        parser.error(f'--budget-s must be >= 0 seconds, got {args.budget_s}')
    size_name = 'cpu-small' if args.cpu_small else 'full'
    size = SIZES[size_name]
    budget = args.budget_s if args.budget_s is not None else size['budget_s']
    device = torch.device('cpu' if args.cpu_small else 'cuda')
    work = osp.join(args.out_dir, 'work')
    os.makedirs(work, exist_ok=True)
    result = dict(size=size_name, environment=environment(device), budget_s=budget, tables={},
                  validation={}, structures={}, speedups={}, skipped=[], over_budget=[])
    env = result['environment']
    if device.type != 'cuda':
        result['skipped'].append('cudagraph and TensorRT (CPU)')
    elif not env['tensorrt']:
        result['skipped'].append('TensorRT (tensorrt does not import): torch.compile is the '
                                 "compiled runtime of the tables; no trt speed-ups")
    not_compiled = [m for m in METHODS if m not in size['compiled_methods']]
    if not_compiled:
        result['skipped'].append(f"compiled speed-ups of {', '.join(not_compiled)} "
                                 f"(size {size_name})")
    log(f'{env}')
    steps = Steps(budget, result, args.out_dir)
    common = ['--repeats', str(size['repeats']), '--warmup', str(size['warmup'])]

    def table(runtime):
        path = osp.join(work, f'table_{runtime}.json')
        prefix = 'compile_' if runtime == 'compile' else ''
        tool('profile_latency').main([size['config'], '--out', path, '--step', str(size['step']),
                                      '--runtime', runtime, '--samples',
                                      str(size[prefix + 'samples']), '--device', str(device),
                                      *common])
        result['tables'][runtime] = path

    def validation(runtime):
        prefix = 'compile_' if runtime == 'compile' else ''
        report = tool('validate_latency').main(
            [size['config'], '--table', result['tables'][runtime], '-n',
             str(size[prefix + 'validate']), '--runtime', runtime, '--out-dir',
             osp.join(work, f'validation_{runtime}'), '--device', str(device), *common])
        result['validation'][runtime] = report['models']

    def whole_table():
        # The whole detector's table (backbone, neck convs and head parts), eager.
        path = osp.join(work, 'table_whole_torch.json')
        tool('profile_latency').main([size['whole'], '--out', path, '--step', str(size['step']),
                                      '--samples', str(size['samples']), '--device',
                                      str(device), *common])
        result['tables']['whole/torch'] = path

    dense_ckpt = osp.join(work, 'dense.pth')

    def dense_checkpoint():  # what every speed-up is paired against
        from mmdp.runtime.detector import build_detector
        torch.manual_seed(0)
        dense, _ = build_detector(size['config'])
        torch.save({'meta': {}, 'state_dict': dense.state_dict()}, dense_ckpt)

    def structure(name, method):
        table_path = result['tables']['whole/torch' if method[3] == 'whole' else 'torch']
        config, weights, summary = choose_and_export(name, method, size, table_path, work,
                                                     device)
        result['structures'][name] = dict(summary, config=config, weights=weights)
        result['speedups'][name] = {}

    def speedup(name, runtime, precision):
        s = result['structures'][name]
        out = osp.join(work, f'speedup_{name}_{runtime}_{precision}.json')
        code = tool('speedup').main([
            s['config'], s['weights'], '--against', size['config'], dense_ckpt, '--rounds',
            str(size['rounds']), '--runtime', runtime, '--device', str(device),
            *(['--amp'] if precision == 'amp' else []), '--out', out])
        if code:
            raise RuntimeError(f'tools/speedup.py failed for {name} ({runtime}, {precision})')
        with open(out) as f:
            result['speedups'][name][f'{runtime}/{precision}'] = json.load(f)['speedup']

    # Priority order: the eager figures every method needs first, then the CUDA-graph table,
    # then the compiled runtime (the slowest to set up: every new shape compiles anew).
    tables = table_runtimes(device, env)
    steps.run('latency table (torch)', table, 'torch')
    steps.run('validating the latency models (torch)', validation, 'torch')
    steps.run('latency table (whole detector, torch)', whole_table)
    steps.run('dense checkpoint', dense_checkpoint)
    for name, method in METHODS.items():
        steps.run(f'{name}: structure and export', structure, name, method)
        for precision in PRECISIONS:
            steps.run(f'{name}: paired speed-up against dense (torch, {precision})', speedup,
                      name, 'torch', precision)
    for runtime in tables[1:]:
        steps.run(f'latency table ({runtime})', table, runtime)
        steps.run(f'validating the latency models ({runtime})', validation, runtime)
    for runtime in detector_runtimes(device, env)[1:]:
        for name in size['compiled_methods']:
            for precision in PRECISIONS if runtime != 'trt' else ('fp32',):
                steps.run(f'{name}: paired speed-up against dense ({runtime}, {precision})',
                          speedup, name, runtime, precision)
    steps.write()
    log(f"done in {time.monotonic() - steps.start:.0f} s: "
        f"{osp.join(args.out_dir, 'gpu_check.md')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
