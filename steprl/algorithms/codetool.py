"""CodeTool (process supervision for code-based tool invocation): the pure pieces.

* **On-the-spot reward** of a step: 1 if its code ran without error (SuccCalling of a code step),
  1 for an answer (the final one, or in a conversation a reply to an earlier user turn: it runs no
  code), 0 for a step that did not parse or was cut by the token budget.
* **Latent reward** of a step: a process reward model's estimate of the step's potential,
  ``P(yes)`` for "the step ending the context has more potential" (``steprl.prm``).
* **Potential labels** from an exploration tree (depth D, n samples per node, every leaf completed
  by rollouts): a node's *soft* potential is the mean success of all rollouts below it, its *hard*
  potential is 1 if any of them succeeded. Siblings (children of one node) with different
  potentials become PRM examples: the better one "yes", the worse one "no".
* **Inference**: sample n candidate steps, follow the one with the largest
  ``on_the_spot + latent`` (ties: the first), up to a maximum depth.
"""

from __future__ import annotations

from collections.abc import Sequence

from steprl.protocol import StepRecord

POTENTIALS = ("soft", "hard")


def on_the_spot_reward(step: StepRecord) -> float:
    """1 if the step's code executed without error (or it answered: the final answer or a reply), 0 if it
    failed, did not parse or was cut."""
    if step.parse_error:
        return 0.0
    if step.is_final or step.is_reply:
        return 1.0
    return float(step.succ_calling)


OUTCOMES = ("solved", "return")


def rollout_outcome(is_solved: float, step_rewards: Sequence[float], mode: str) -> float:
    """How successful one completed rollout was, for potential labels.

    ``solved`` (the paper): IsSolved (1 solved, 0.5 unsure, 0 unsolved). ``return``: the mean shaped step
    reward of the episode, a dense stand-in for success when the policy almost never solves a task
    (e.g. the embedded tiny model); only meaningful with soft potentials.
    """
    if mode == "solved":
        return float(is_solved)
    if mode == "return":
        return sum(step_rewards) / len(step_rewards) if step_rewards else 0.0
    raise ValueError(f"unknown outcome {mode!r}; known: {OUTCOMES}")


def node_potentials(
    parents: Sequence[int], outcomes: Sequence[Sequence[float]], mode: str
) -> list[float | None]:
    """Potential of every node of a tree from the outcomes (success in [0, 1]) of the rollouts that
    ended in each node's subtree.

    ``parents[i]`` is node i's parent (-1 for a root; parents come before their children);
    ``outcomes[i]`` holds the successes of rollouts that ended *at* node i (a terminal step, or the
    completions run from a leaf). soft: mean of every outcome below (and at) the node; hard: 1 if any
    of them is a full success (1.0), else 0. A node with no rollout below it has potential None.
    """
    if mode not in POTENTIALS:
        raise ValueError(f"unknown potential {mode!r}; known: {POTENTIALS}")
    if len(parents) != len(outcomes):
        raise ValueError(f"{len(parents)} parents for {len(outcomes)} outcome lists")
    below: list[list[float]] = [list(map(float, o)) for o in outcomes]
    for i in reversed(range(len(parents))):  # children come after their parent: fold bottom-up
        p = parents[i]
        if p >= i:
            raise ValueError(f"node {i}: its parent {p} must come before it")
        if p >= 0:
            below[p].extend(below[i])
    out: list[float | None] = []
    for vals in below:
        if not vals:
            out.append(None)
        elif mode == "soft":
            out.append(sum(vals) / len(vals))
        else:
            out.append(1.0 if any(v >= 1.0 for v in vals) else 0.0)
    return out


def sibling_label_pairs(parents: Sequence[int], potentials: Sequence[float | None]) -> list[tuple[int, int]]:
    """(better, worse) node pairs among the children of each node whose potentials differ."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        if p >= 0 and potentials[i] is not None:
            children.setdefault(p, []).append(i)
    pairs = []
    for kids in children.values():
        for a in range(len(kids)):
            for b in range(a + 1, len(kids)):
                i, j = kids[a], kids[b]
                if potentials[i] != potentials[j]:
                    pairs.append((i, j) if potentials[i] > potentials[j] else (j, i))  # type: ignore[operator]
    return pairs


def select_best(on_the_spot: Sequence[float], latent: Sequence[float]) -> int:
    """Index of the candidate with the largest ``on_the_spot + latent`` (the first one on a tie)."""
    if not on_the_spot or len(on_the_spot) != len(latent):
        raise ValueError(f"need matching non-empty scores, got {len(on_the_spot)} and {len(latent)}")
    totals = [float(a) + float(b) for a, b in zip(on_the_spot, latent, strict=True)]
    return max(range(len(totals)), key=lambda i: (totals[i], -i))
