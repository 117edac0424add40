"""One trace per problem: which component supplies each problem of a mix, shares kept exact.

The published Mix-Long set has one trace per MATH problem, long for some problems and short for
the rest. Drawing each component independently (the default) lets a problem appear twice, once
per style, or not at all. Here each component's target count (from its share) is met with
distinct problems: a seeded greedy pass gives each component problems in a random order, then
augmenting paths move problems between components until every target is met, or prove it cannot
be (a component's pool covers too few problems nobody else needs). Problems are identified by
their normalised text, so the same problem from two sources is one problem.
"""
from __future__ import annotations

import random
from collections import deque

__all__ = ["assign_problems"]


def assign_problems(available: dict[str, list[str]], targets: dict[str, int],
                    rng: random.Random) -> tuple[dict[str, list[str]], int]:
    """Disjoint problem sets, ``targets[c]`` problems for each component ``c`` drawn from
    ``available[c]``; also how many problems the repair pass moved. Raises ValueError naming the
    component whose target cannot be met."""
    owner: dict[str, str] = {}
    owned: dict[str, set[str]] = {c: set() for c in targets}
    order = {}
    for comp in sorted(targets):
        problems = sorted(set(available[comp]))
        rng.shuffle(problems)
        order[comp] = problems
        for p in problems:
            if len(owned[comp]) >= targets[comp]:
                break
            if p not in owner:
                owner[p] = comp
                owned[comp].add(p)
    moved = 0
    for comp in sorted(targets):
        while len(owned[comp]) < targets[comp]:
            path = _augmenting_path(comp, order, owner)
            if path is None:
                free = len({p for p in order[comp] if p not in owner})
                raise ValueError(f"component '{comp}' needs {targets[comp]} distinct problems but only "
                                 f"{len(owned[comp]) + free} of its {len(order[comp])} can be given to it "
                                 "without taking another component below its share")
            # path: comp -p1-> c1 -p2-> c2 ... -pk-> (free): each component takes the next problem
            taker = comp
            for problem, giver in path:
                if giver is not None:
                    owned[giver].discard(problem)
                    moved += 1
                owned[taker].add(problem)
                owner[problem] = taker
                taker = giver
    return {c: sorted(owned[c]) for c in targets}, moved


def _augmenting_path(start: str, order: dict[str, list[str]], owner: dict[str, str]):
    """Breadth-first: a chain of (problem, its current owner) from ``start`` ending at a free
    problem, or None. Each owner on the chain gives its problem to the one before it and takes
    the next problem of the chain."""
    parent: dict[str, tuple[str | None, str | None]] = {start: (None, None)}   # comp -> (problem, prev comp)
    queue = deque([start])
    while queue:
        comp = queue.popleft()
        for problem in order[comp]:
            holder = owner.get(problem)
            if holder == comp:
                continue
            if holder is None:                      # a free problem: walk back to the start
                chain = [(problem, None)]
                cur = comp
                while cur != start:
                    prob, prev = parent[cur]
                    chain.append((prob, cur))
                    cur = prev
                chain.reverse()
                # chain is [(p1, c1), (p2, c2), ..., (pk, None)]: start takes p1 from c1, c1 takes p2, ...
                return chain
            if holder not in parent:
                parent[holder] = (problem, comp)
                queue.append(holder)
    return None
