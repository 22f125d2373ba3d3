"""A whole detector in the ort or trt runtime: its two deployment graphs (tools/deploy.py)
exported from the model, run with the detector's own host code (mmdp.deploy.OrtStreamPETR)."""
import tempfile
import time

from mmdp.deploy import OrtStreamPETR, export_onnx

# The graphs, as a benchmark's breakdown names them: (OrtStreamPETR attribute, name).
GRAPHS = (('backbone', 'backbone_neck'), ('head_graph', 'head'))


class _TimedSession:
    """A graph whose `run` calls are timed on the host clock (they return host arrays, so they
    have finished), into `times`."""

    def __init__(self, session, times: list):
        self.session, self.times = session, times

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.session.run(*args, **kwargs)
        self.times.append(time.perf_counter() - start)
        return out

    def get_inputs(self):
        return self.session.get_inputs()


def deployed_runner(model, runtime: str, device, example):
    """`run(data)` -> the decoded results of one frame; `run.part_times`: seconds per call of
    each graph (the rest of a frame's time is host code: geometry, memory queue, decoding)."""
    if runtime == 'ort':
        from . import ort

        def open_session(path):
            return ort.session(path, device)
    elif runtime == 'trt':
        from .trt import Engine

        def open_session(path):
            return Engine(path, device)
    else:
        raise ValueError(f'runtime {runtime!r} is not a deployed runtime (ort, trt)')
    # Sessions and engines read their graph when made: the folder can go afterwards.
    with tempfile.TemporaryDirectory(prefix='mmdp-deploy-') as folder:
        export_onnx(model, example, folder)
        detector = OrtStreamPETR(model, folder, open_session=open_session)
    times = {name: [] for _, name in GRAPHS}
    for attr, name in GRAPHS:
        setattr(detector, attr, _TimedSession(getattr(detector, attr), times[name]))

    def run(data):
        return detector(data)[0]

    run.part_times = times
    return run
