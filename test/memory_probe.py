"""Test helper: run a snippet in a fresh interpreter and report its peak memory and outcome.

Inputs that once exhausted memory are replayed here, not in the pytest process: the child's
address space may grow by at most ``cap_mb`` after its setup, so a regression ends in a
MemoryError in the child instead of the OOM killer on the shared machine. The peak is the growth
of the resident set (VmHWM, reset after setup) over the resident set after setup.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

_CHILD = '''
import json, os, resource, sys

def _status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

{setup}

import gc
gc.collect()
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')                     # reset the peak resident set (VmHWM)
before = _status('VmRSS')
_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (_status('VmSize') + {cap} * 2**20, hard))
try:
{action}
    outcome = {{'error': None, 'message': ''}}
except BaseException as e:            # reported to the test, which decides
    outcome = {{'error': type(e).__name__, 'message': str(e)}}
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
outcome['peak_mb'] = (_status('VmHWM') - before) / 2**20
print('MEMORY_PROBE ' + json.dumps(outcome))
'''


def run(setup: str, action: str, cap_mb: int = 2048, timeout_s: float = 300) -> dict[str, Any]:
    """``{'error': exception type name or None, 'message': str, 'peak_mb': float}``.

    ``setup`` runs unmeasured (imports, building inputs); ``action`` is measured and capped.
    """
    code = _CHILD.format(setup=textwrap.dedent(setup), cap=int(cap_mb),
                         action=textwrap.indent(textwrap.dedent(action), '    '))
    env = dict(os.environ, MALLOC_ARENA_MAX='2', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith('MEMORY_PROBE '):
            return json.loads(line[len('MEMORY_PROBE '):])
    raise AssertionError(f'the probe child failed (exit {proc.returncode}): {proc.stderr[-3000:]}')
