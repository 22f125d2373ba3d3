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
    # seconds each): fewer of them, and compiled speed-ups of the two MDP-45 methods only, to
    # keep the whole check within the 9 minutes of one device call. Unmeasured on a GPU so far.
    'full': dict(config='configs/streampetr_r50_704_dense.py',
                 whole='configs/streampetr_mdp45_whole.py', step=32, repeats=30, warmup=5,
                 samples=12, validate=20, compile_samples=4, compile_validate=6, rounds=20,
                 compiled_methods=('mdp45', 'mdp45_whole')),
    # On the CPU inductor takes 15-40 s per new backbone shape: the compile speed-ups of one
    # method test that step (each method's would add minutes).
    'cpu-small': dict(config='configs/streampetr_r50_small_cpu.py',
                      whole='configs/streampetr_mdp45_whole_small_cpu.py', step=512, repeats=1,
                      warmup=0, samples=5, validate=2, compile_samples=5, compile_validate=2,
                      rounds=20, compiled_methods=('mdp45',)),
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
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description='GPU check of tables, structures, speed-ups')
    parser.add_argument('out_dir')
    parser.add_argument('--cpu-small', action='store_true',
                        help='the same steps on the CPU at small size (tests the steps)')
    args = parser.parse_args(argv)
    if not args.cpu_small and not torch.cuda.is_available():
        print('error: no CUDA device (torch.cuda.is_available() is False): the GPU check needs '
              'an NVIDIA GPU; --cpu-small runs its steps on the CPU at small size',
              file=sys.stderr)
        return 1
    size_name = 'cpu-small' if args.cpu_small else 'full'
    size = SIZES[size_name]
    device = torch.device('cpu' if args.cpu_small else 'cuda')
    work = osp.join(args.out_dir, 'work')
    os.makedirs(work, exist_ok=True)
    result = dict(size=size_name, environment=environment(device), tables={}, validation={},
                  structures={}, speedups={}, skipped=[])
    env = result['environment']
    if device.type != 'cuda':
        result['skipped'].append('cudagraph and TensorRT (CPU)')
    elif not env['tensorrt']:
        result['skipped'].append('TensorRT (tensorrt does not import): torch.compile is the '
                                 "compiled runtime of the tables; no trt speed-ups")
    skipped = [m for m in METHODS if m not in size['compiled_methods']]
    if skipped:
        result['skipped'].append(f"compiled speed-ups of {', '.join(skipped)} (size {size_name})")
    log(f'{env}')
    common = ['--repeats', str(size['repeats']), '--warmup', str(size['warmup'])]
    for runtime in table_runtimes(device, env):
        path = osp.join(work, f'table_{runtime}.json')
        prefix = 'compile_' if runtime == 'compile' else ''
        samples, validate = size[prefix + 'samples'], size[prefix + 'validate']
        log(f'latency table ({runtime})')
        tool('profile_latency').main([size['config'], '--out', path, '--step', str(size['step']),
                                      '--runtime', runtime, '--samples', str(samples),
                                      '--device', str(device), *common])
        result['tables'][runtime] = path
        log(f'validating the latency models ({runtime})')
        report = tool('validate_latency').main(
            [size['config'], '--table', path, '-n', str(validate), '--runtime', runtime,
             '--out-dir', osp.join(work, f'validation_{runtime}'), '--device', str(device),
             *common])
        result['validation'][runtime] = report['models']
    torch.manual_seed(0)
    from mmdp.runtime.detector import build_detector
    dense, _ = build_detector(size['config'])
    dense_ckpt = osp.join(work, 'dense.pth')
    torch.save({'meta': {}, 'state_dict': dense.state_dict()}, dense_ckpt)
    del dense
    # The whole detector's table (backbone, neck convs and head parts), eager.
    whole_table = osp.join(work, 'table_whole_torch.json')
    log('latency table (whole detector, torch)')
    tool('profile_latency').main([size['whole'], '--out', whole_table, '--step',
                                  str(size['step']), '--samples', str(size['samples']),
                                  '--device', str(device), *common])
    result['tables']['whole/torch'] = whole_table
    for name, method in METHODS.items():
        log(f'{name}: structure and export')
        table = whole_table if method[3] == 'whole' else result['tables']['torch']
        config, weights, summary = choose_and_export(name, method, size, table, work, device)
        result['structures'][name] = dict(summary, config=config, weights=weights)
        result['speedups'][name] = {}
        for runtime in detector_runtimes(device, env):
            if runtime != 'torch' and name not in size['compiled_methods']:
                continue
            for precision in PRECISIONS if runtime != 'trt' else ('fp32',):
                log(f'{name}: paired speed-up against dense ({runtime}, {precision})')
                out = osp.join(work, f'speedup_{name}_{runtime}_{precision}.json')
                code = tool('speedup').main([
                    config, weights, '--against', size['config'], dense_ckpt, '--rounds',
                    str(size['rounds']), '--runtime', runtime, '--device', str(device),
                    *(['--amp'] if precision == 'amp' else []), '--out', out])
                if code:
                    raise RuntimeError(f'tools/speedup.py failed for {name} ({runtime}, '
                                       f'{precision})')
                with open(out) as f:
                    result['speedups'][name][f'{runtime}/{precision}'] = json.load(f)['speedup']
    atomic_write_json(osp.join(args.out_dir, 'gpu_check.json'), result)
    atomic_write_text(osp.join(args.out_dir, 'gpu_check.md'), markdown(result))
    log(f"done: {osp.join(args.out_dir, 'gpu_check.md')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
