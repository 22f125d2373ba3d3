"""The pruning problem and its solution (docs/problem-format.md) in memory and as JSON."""
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from mmdp.fileio import atomic_write_json

FORMAT_VERSION = 2
VERSIONS = (1, 2)  # version 1 files (no group kinds) still load and solve
GROUP_KINDS = ('channels', 'hidden', 'heads', 'tokens')
STATUSES = ('optimal', 'feasible', 'infeasible')
# A latency "fits" when it is within this relative margin of the budget: every solver and test
# uses `Problem.fits`, so that float sums in a different order never disagree on feasibility.
FIT_RTOL = 1e-9


class ProblemError(ValueError):
    """A problem or solution that does not follow docs/problem-format.md."""


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def read_json(path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ProblemError(f'{path}: no such file') from None
    except json.JSONDecodeError as e:
        raise ProblemError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(data, dict):
        raise ProblemError(f'{path}: expected a JSON object, found {type(data).__name__}')
    return data


def _parse_settings(group: str, settings, n_widths: int) -> list:
    """A token group's settings: one {count name: non-negative integer} per width, all with
    the same names (e.g. num_query, num_propagated, memory_len)."""
    where = f"group '{group}' (kind 'tokens')"
    if not isinstance(settings, list) or len(settings) != n_widths:
        found = len(settings) if isinstance(settings, list) else repr(settings)
        raise ProblemError(f"{where}: 'settings' must list one setting per width ({n_widths}), "
                           f'found {found}')
    names = None
    for k, setting in enumerate(settings):
        if (not isinstance(setting, dict) or not setting
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for v in setting.values())):
            raise ProblemError(f"{where}: 'settings'[{k}] must map count names to non-negative "
                               f'integers, found {setting!r}')
        if names is None:
            names = sorted(setting)
        elif sorted(setting) != names:
            raise ProblemError(f"{where}: 'settings'[{k}] counts {sorted(setting)}, "
                               f"'settings'[0] counts {names}")
    return [dict(s) for s in settings]


@dataclass
class Layer:
    """One layer of the problem; arrays are indexed by width position (see the format doc)."""
    name: str
    group: str
    input_group: Optional[str]
    block: Optional[str]
    importance: np.ndarray  # (K,)
    latency: np.ndarray  # (K, J), or (K,) when input_group is None

    def latency_at(self, k: int, j: int) -> float:
        return float(self.latency[k] if self.input_group is None else self.latency[k, j])


class Problem:
    """A pruning problem: groups of coupled channels, layers with value and latency tables,
    removable blocks and a latency budget.

    Build it with `Problem.from_dict` or `Problem.load`; both validate and raise `ProblemError`
    naming the offending layer, group or key.
    """

    def __init__(self, budget: float, groups: dict, layers: list, blocks: list,
                 extra: Optional[dict] = None, group_info: Optional[dict] = None,
                 version: int = FORMAT_VERSION):
        self.budget = float(budget)
        self.version = version
        # Version 2: {group: {'kind', 'unit'}}; what a width counts (solvers do not read it).
        self.group_info = {g: dict(v) for g, v in (group_info or {}).items()}
        self.groups = {name: list(widths) for name, widths in groups.items()}
        self.layers = list(layers)
        self.blocks = list(blocks)
        self.extra = dict(extra or {})
        self.width_index = {g: {w: k for k, w in enumerate(ws)} for g, ws in self.groups.items()}

    # ---------------------------------------------------------------- construction and JSON
    @classmethod
    def from_dict(cls, data: dict) -> 'Problem':
        if not isinstance(data, dict):
            raise ProblemError(f'problem: expected a dict, found {type(data).__name__}')
        for key in ('version', 'budget', 'groups', 'layers', 'blocks'):
            if key not in data:
                raise ProblemError(f"problem: missing key '{key}'")
        if data['version'] not in VERSIONS:
            raise ProblemError(f"problem: 'version' is {data['version']!r}, "
                               f'supported: {list(VERSIONS)}')
        if not _is_number(data['budget']):
            raise ProblemError(f"problem: 'budget' must be a finite number, "
                               f"found {data['budget']!r}")
        groups = cls._parse_groups(data['groups'])
        layers = [cls._parse_layer(i, item, groups) for i, item in enumerate(
            cls._expect_list(data['layers'], "'layers'"))]
        names = [layer.name for layer in layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ProblemError(f'problem: layer names must be unique, repeated: {duplicates}')
        blocks = cls._parse_blocks(data['blocks'], layers)
        extra = {k: v for k, v in data.items()
                 if k not in ('version', 'budget', 'groups', 'layers', 'blocks')}
        info = cls._parse_group_info(data['groups'], groups) if data['version'] >= 2 else {}
        return cls(data['budget'], groups, layers, blocks, extra, info, data['version'])

    @staticmethod
    def _parse_group_info(raw: dict, groups: dict) -> dict:
        info = {}
        for name, spec in raw.items():
            kind, unit = spec.get('kind', 'channels'), spec.get('unit', 1)
            if kind not in GROUP_KINDS:
                raise ProblemError(f"group '{name}': 'kind' is {kind!r}, expected one of "
                                   f'{list(GROUP_KINDS)}')
            if not isinstance(unit, int) or isinstance(unit, bool) or unit < 1:
                raise ProblemError(f"group '{name}': 'unit' must be a positive integer, "
                                   f'found {unit!r}')
            info[name] = {'kind': kind, 'unit': unit}
            if kind == 'tokens':
                info[name]['settings'] = _parse_settings(name, spec.get('settings'),
                                                         len(groups[name]))
            elif 'settings' in spec:
                raise ProblemError(f"group '{name}': 'settings' belongs to a group of kind "
                                   f"'tokens', this one is {kind!r}")
        return info

    @staticmethod
    def _expect_list(value, what: str) -> list:
        if not isinstance(value, list):
            raise ProblemError(f'problem: {what} must be a list, found {type(value).__name__}')
        return value

    @staticmethod
    def _parse_groups(raw) -> dict:
        if not isinstance(raw, dict) or not raw:
            raise ProblemError("problem: 'groups' must be a non-empty object "
                               '{name: {"widths": [...]}}')
        groups = {}
        for name, spec in raw.items():
            if not isinstance(spec, dict) or 'widths' not in spec:
                raise ProblemError(f"group '{name}': expected an object with key 'widths'")
            widths = spec['widths']
            if (not isinstance(widths, list) or not widths
                    or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                               for w in widths)):
                raise ProblemError(f"group '{name}': 'widths' must be a non-empty list of "
                                   f'positive integers, found {widths!r}')
            if any(a >= b for a, b in zip(widths, widths[1:])):
                raise ProblemError(f"group '{name}': 'widths' must be strictly ascending, "
                                   f'found {widths}')
            groups[name] = widths
        return groups

    @staticmethod
    def _numbers(value, length: int, where: str, what: str) -> np.ndarray:
        if not isinstance(value, list):
            raise ProblemError(f'{where}: {what} must be a list, found {type(value).__name__}')
        if len(value) != length:
            raise ProblemError(f'{where}: {what} has length {len(value)}, expected {length}')
        bad = [v for v in value if not _is_number(v)]
        if bad:
            raise ProblemError(f'{where}: {what} must hold finite numbers, found {bad[0]!r}')
        return np.asarray(value, dtype=float)

    @classmethod
    def _parse_layer(cls, index: int, item, groups: dict) -> Layer:
        if not isinstance(item, dict):
            raise ProblemError(f'layers[{index}]: expected an object, found '
                               f'{type(item).__name__}')
        name = item.get('name')
        if not isinstance(name, str) or not name:
            raise ProblemError(f"layers[{index}]: 'name' must be a non-empty string")
        where = f"layer '{name}'"
        for key in ('group', 'input_group', 'block', 'importance', 'latency'):
            if key not in item:
                raise ProblemError(f"{where}: missing key '{key}'")
        group, input_group, block = item['group'], item['input_group'], item['block']
        if group not in groups:
            raise ProblemError(f"{where}: 'group' {group!r} is not in 'groups'")
        if input_group is not None and input_group not in groups:
            raise ProblemError(f"{where}: 'input_group' {input_group!r} is not in 'groups' "
                               '(use null for a fixed input width)')
        if block is not None and (not isinstance(block, str) or not block):
            raise ProblemError(f"{where}: 'block' must be a non-empty string or null, "
                               f'found {block!r}')
        n_out = len(groups[group])
        importance = cls._numbers(item['importance'], n_out, where,
                                  f"'importance' (one per width of group '{group}')")
        cls._non_negative(importance, where, 'importance', group, groups, input_group)
        if input_group is None:
            latency = cls._numbers(item['latency'], n_out, where,
                                   f"'latency' (one per width of group '{group}', "
                                   'input_group is null)')
        else:
            rows = item['latency']
            if not isinstance(rows, list) or len(rows) != n_out:
                found = len(rows) if isinstance(rows, list) else type(rows).__name__
                raise ProblemError(f"{where}: 'latency' has {found} rows, expected {n_out} "
                                   f"(one per width of group '{group}')")
            n_in = len(groups[input_group])
            latency = np.stack([
                cls._numbers(row, n_in, where, f"'latency'[{k}] (one per width of "
                             f"input_group '{input_group}')") for k, row in enumerate(rows)])
        cls._non_negative(latency, where, 'latency', group, groups, input_group)
        return Layer(name, group, input_group, block, importance, latency)

    @staticmethod
    def _non_negative(values: np.ndarray, where: str, what: str, group: str, groups: dict,
                      input_group: Optional[str]) -> None:
        """Importance is a saliency magnitude and latency a time: a negative entry is a bug
        upstream, and the solvers rely on neither being negative (a removed block must not gain
        value, HALP's bins must not shrink)."""
        bad = np.argwhere(values < 0)
        if not len(bad):
            return
        index = tuple(int(i) for i in bad[0])
        at = f'width {groups[group][index[0]]} of group {group!r}'
        if len(index) == 2:
            at += f', input width {groups[input_group][index[1]]} of group {input_group!r}'
        raise ProblemError(f"{where}: {what} must not be negative, found {values[index]:g} at "
                           f'{at} ({len(bad)} negative entries)')

    @staticmethod
    def _parse_blocks(raw, layers: list) -> list:
        if not isinstance(raw, list) or not all(isinstance(b, str) for b in raw):
            raise ProblemError(f"problem: 'blocks' must be a list of block names, found {raw!r}")
        if len(set(raw)) != len(raw):
            raise ProblemError(f"problem: 'blocks' lists a block twice: {raw}")
        used = {layer.block for layer in layers}
        empty = [b for b in raw if b not in used]
        if empty:
            raise ProblemError(f"problem: block {empty[0]!r} is listed in 'blocks' but no layer "
                               'has it as its \'block\'')
        return list(raw)

    def to_dict(self) -> dict:
        layers = []
        for layer in self.layers:
            layers.append({
                'name': layer.name, 'group': layer.group, 'input_group': layer.input_group,
                'block': layer.block, 'importance': layer.importance.tolist(),
                'latency': layer.latency.tolist()})
        return {'version': self.version, 'budget': self.budget,
                'groups': {g: {'widths': ws, **self.group_info.get(g, {})}
                           for g, ws in self.groups.items()},
                'layers': layers, 'blocks': list(self.blocks), **self.extra}

    @classmethod
    def load(cls, path) -> 'Problem':
        try:
            return cls.from_dict(read_json(path))
        except ProblemError as e:
            msg = str(e)
            raise ProblemError(msg if msg.startswith(str(path)) else f'{path}: {msg}') from None

    def save(self, path) -> None:
        atomic_write_json(path, self.to_dict())

    # ---------------------------------------------------------------- evaluation
    def with_budget(self, budget: float) -> 'Problem':
        return Problem(budget, self.groups, self.layers, self.blocks, self.extra,
                       self.group_info, self.version)

    def fits(self, latency: float) -> bool:
        return latency <= self.budget + FIT_RTOL * max(1.0, abs(self.budget))

    def indices(self, widths: dict) -> dict:
        """Map {group: width} to {group: position in its widths}, checking every group."""
        if not isinstance(widths, dict):
            raise ProblemError(f'widths: expected a dict {{group: width}}, found {widths!r}')
        unknown = [g for g in widths if g not in self.groups]
        if unknown:
            raise ProblemError(f'widths: unknown group {unknown[0]!r}')
        missing = [g for g in self.groups if g not in widths]
        if missing:
            raise ProblemError(f'widths: no width given for group {missing[0]!r}')
        out = {}
        for g, w in widths.items():
            if w not in self.width_index[g]:
                raise ProblemError(f"widths: {w!r} is not an allowed width of group '{g}' "
                                   f'(allowed: {self.groups[g]})')
            out[g] = self.width_index[g][w]
        return out

    def check_removed(self, removed_blocks) -> set:
        removed = set(removed_blocks)
        bad = sorted(b for b in removed if b not in self.blocks)
        if bad:
            raise ProblemError(f"removed_blocks: {bad[0]!r} is not a removable block "
                               f"(listed in 'blocks': {self.blocks})")
        return removed

    def evaluate(self, widths: dict, removed_blocks=()) -> tuple:
        """The (objective, latency) of a choice, recomputed from the tables."""
        idx = self.indices(widths)
        removed = self.check_removed(removed_blocks)
        objective = latency = 0.0
        for layer in self.layers:
            if layer.block in removed:
                continue
            k = idx[layer.group]
            objective += float(layer.importance[k])
            latency += layer.latency_at(k, idx.get(layer.input_group, 0))
        return objective, latency

    def dense_latency(self) -> float:
        """The latency with every group at its largest width and every block kept."""
        return self.evaluate({g: ws[-1] for g, ws in self.groups.items()})[1]

    def __repr__(self) -> str:
        return (f'Problem(budget={self.budget:g}, groups={len(self.groups)}, '
                f'layers={len(self.layers)}, blocks={len(self.blocks)})')


@dataclass
class Solution:
    """A solver's answer; `objective` and `latency` come from `Problem.evaluate`."""
    status: str
    objective: float
    latency: float
    widths: dict = field(default_factory=dict)
    removed_blocks: list = field(default_factory=list)
    gap: Optional[float] = None
    seconds: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ProblemError(f'solution: status {self.status!r} is not one of {STATUSES}')

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> 'Solution':
        keys = ('status', 'objective', 'latency', 'widths', 'removed_blocks', 'gap', 'seconds')
        missing = [k for k in keys if k not in data]
        if missing:
            raise ProblemError(f"solution: missing key '{missing[0]}'")
        return cls(**{k: data[k] for k in keys})

    def save(self, path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> 'Solution':
        return cls.from_dict(read_json(path))
