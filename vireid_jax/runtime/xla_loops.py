"""The while loops and conditionals of a compiled XLA program, read from its HLO text.

Why they matter: XLA:GPU runs a while loop whose trip count it derived at compile time as its
body repeated on the device stream; any other while loop copies its predicate to the host after
every iteration and blocks the host until the device gets there (`WhileThunk`), and a
conditional does the same once per execution. Each such read stops the host from queueing
work ahead of the device (unless XLA's command buffers take WHILE / CONDITIONAL, which evaluate
the predicate on the device). XLA writes the count it derived into the loop's backend config
(`"known_trip_count":{"n":"..."}`) on every backend, so a CPU compile shows which loops a GPU
would wait on:

  text = jax.jit(step).lower(*args).compile().as_text()
  [loop.op_name for loop in while_loops(text) if loop.trip_count is None]
"""

import dataclasses
import re
from typing import Optional

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s(while|conditional)\(')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class ControlFlow:
  """One while or conditional instruction.

  Attributes:
    name: the HLO instruction name, e.g. 'while.12'.
    kind: 'while' or 'conditional'.
    op_name: the JAX op name in its metadata (named scopes included, e.g.
      'jit(train_step)/multiply_rectangles/while'); '' when the metadata has none.
    trip_count: the trip count XLA knows (while only); None when it does not.
  """

  name: str
  kind: str
  op_name: str
  trip_count: Optional[int]


def control_flow(hlo_text: str) -> list[ControlFlow]:
  """Every while and conditional instruction of `hlo_text` (`compiled.as_text()`)."""
  found = []
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    trip_count = _TRIP_COUNT.search(line)
    op_name = _OP_NAME.search(line)
    found.append(ControlFlow(name=match.group(1), kind=match.group(2),
                             op_name=op_name.group(1) if op_name else '',
                             trip_count=int(trip_count.group(1)) if trip_count else None))
  return found


def while_loops(hlo_text: str) -> list[ControlFlow]:
  """The while loops of `hlo_text`, with the trip counts XLA knows."""
  return [c for c in control_flow(hlo_text) if c.kind == 'while']


def host_predicates(hlo_text: str) -> dict:
  """A summary for benchmark lines: while loops, those of unknown trip count (their op names)
  and conditionals, i.e. what XLA:GPU reads on the host without command buffers."""
  flow = control_flow(hlo_text)
  loops = [c for c in flow if c.kind == 'while']
  unknown = [c.op_name or c.name for c in loops if c.trip_count is None]
  return {'while_loops': len(loops), 'unknown_trip_count_loops': len(unknown),
          'unknown_trip_count_ops': sorted(unknown),
          'conditionals': sum(c.kind == 'conditional' for c in flow)}
