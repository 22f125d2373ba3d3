"""One pruning event: the problem of the current saliency and budget (docs/problem-format.md),
the structure choice of its solution, and a summary of what changed."""
from mmdp.importance import channel_order, group_scores, layer_values
from mmdp.solvers import Problem, Solution
from mmdp.structure import Structure, StructureChoice


def build_problem(latency_model, structure: Structure, saliency: dict,
                  current: StructureChoice, budget: float, chunk: int) -> tuple:
    """(Problem, {group: channel order}) for `saliency` ({layer: per-channel value},
    `TaylorSaliency.average()`) under `budget` (ms); channels still kept by `current` rank
    ahead of pruned ones."""
    order = channel_order(group_scores(structure, saliency),
                          {g: current.kept(structure, g) for g in structure.groups})
    problem = latency_model.to_problem(structure, layer_values(structure, saliency, order),
                                       budget=budget, chunk=chunk)
    return Problem.from_dict(problem), order


def choice_from_solution(solution: Solution, order: dict, current: StructureChoice
                         ) -> StructureChoice:
    """The solution's widths keep the first channels of each group's order; blocks removed
    before stay removed."""
    channels = {g: sorted(order[g][:w]) for g, w in solution.widths.items()}
    return StructureChoice(solution.widths, current.removed_blocks | set(solution.removed_blocks),
                           channels)


def summarize(structure: Structure, before: StructureChoice, after: StructureChoice,
              reference, **extra) -> dict:
    """Widths per group before and after, removed blocks, and the latency `reference` (a latency
    model) predicts before and after."""
    widths_before, widths_after = before.all_widths(structure), after.all_widths(structure)
    return {
        **extra,
        'predicted_ms': {'before': reference.predict(before), 'after': reference.predict(after),
                         'model': type(reference).__name__},
        'groups': {g: {'before': widths_before[g], 'after': widths_after[g]}
                   for g in structure.groups},
        'removed_blocks': [b for b in structure.block_names if b in after.removed_blocks],
        'newly_removed_blocks': [b for b in structure.block_names
                                 if b in after.removed_blocks - before.removed_blocks],
    }


def format_summary(summary: dict) -> str:
    """Readable lines for the log: changed groups, removed blocks, predicted latency."""
    changed = [f"  {g}: {w['before']} -> {w['after']}" for g, w in summary['groups'].items()
               if w['before'] != w['after']]
    pred = summary['predicted_ms']
    removed = ', '.join(summary['newly_removed_blocks']) or 'none'
    return '\n'.join([
        f"pruning event {summary['event']}/{summary['events']} at iteration "
        f"{summary['iteration']}: {summary['status']} in {summary['seconds']:.2f} s, budget "
        f"{summary['budget_ms']:.4g} ms ({summary['latency_model']})",
        f"predicted latency ({pred['model']}): {pred['before']:.4g} -> {pred['after']:.4g} ms",
        f'blocks removed: {removed}',
        f'group widths changed ({len(changed)} of {len(summary["groups"])}):', *changed])
