"""The main job end to end on an embedded default: a synthetic nuScenes, its info files, a short
dense StreamPETR training, nuScenes evaluation and an FPS measurement. Each step is the command a
user would type; a step that already has its output is skipped."""
import argparse
import json
import os.path as osp
import subprocess
import sys
import time

CONFIG = 'configs/streampetr_r50_small_cpu.py'
DATA = 'data/synthetic_nuscenes'


def run(step, cmd, done=None):
    if done and osp.exists(done):
        print(f'[demo] {step}: already done ({done})', flush=True)
        return
    print(f'[demo] {step}: {" ".join(cmd)}', flush=True)
    start = time.time()
    subprocess.run([sys.executable] + cmd, check=True)
    print(f'[demo] {step}: finished in {time.time() - start:.0f} s', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--scenes', type=int, default=4)
    parser.add_argument('--samples', type=int, default=8)
    args = parser.parse_args()
    work = args.work_dir
    dense = osp.join(work, 'dense')
    run('synthetic nuScenes', ['tools/make_synthetic_nuscenes.py', DATA, '--scenes',
                               str(args.scenes), '--samples', str(args.samples),
                               '--image-size', '400', '225'], done=DATA)
    run('info files', ['tools/create_data.py', 'nuscenes', '--root-path', DATA, '--version',
                       'v1.0-mini', '--out-dir', DATA],
        done=osp.join(DATA, 'nuscenes_infos_val.pkl'))
    run('dense training', ['tools/train.py', CONFIG, '--work-dir', dense])
    with open(osp.join(dense, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    run('evaluation', ['tools/test.py', CONFIG, ckpt, '--work-dir', osp.join(work, 'dense_test')])
    fps_file = osp.join(work, 'dense_fps.json')
    run('benchmark', ['tools/benchmark.py', CONFIG, ckpt, '--samples', '10', '--warmup', '2',
                      '--out', fps_file])
    with open(fps_file) as f:
        fps = json.load(f)
    print(f'[demo] done: checkpoint {ckpt}; {fps["fps"]:.2f} FPS on {fps["device_name"]}; '
          f'logs and metrics under {work}')


if __name__ == '__main__':
    main()
