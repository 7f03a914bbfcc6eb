"""Load from wrk (a C load generator) for the API benchmark: Lua scripts and the run itself.

wrk holds ``connections`` keep-alive connections over ``threads`` threads for ``duration``
seconds and sends each request as soon as the previous answer on its connection is in. A Lua
script makes every request: ``GET`` cycles through the registered devices; ``POST pushers/set``
alternates creating a new device and re-registering a registered one, each body with a fresh
random ``iss``, pushkey (creates) and key identifier, built in Lua so wrk's threads never wait
for Python. ``done()`` prints one JSON line with the counts and latency percentiles.

wrk counts an answer with a status of 400 or above as an error; answers with the wrong body
are what the benchmark's checked warm-up (httpx, every answer compared) is there to catch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkResult", "get_script", "run_wrk", "set_script", "wrk_missing"]

_MARKER = "FDPUSH-WRK-RESULT "

_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    "__MARKER__", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end

local next_id = 0
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end
""".replace("__MARKER__", _MARKER)

_RANDOM = r"""
local HEX = "0123456789abcdef"
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function random_chars(alphabet, n)
  local out = {}
  for i = 1, n do
    local k = math.random(1, #alphabet)
    out[i] = alphabet:sub(k, k)
  end
  return table.concat(out)
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def get_script(calls: Sequence[tuple[str, str]]) -> str:
    """``GET`` each ``(path, authorization)`` in turn, each thread from its own offset."""
    table = ",\n".join(f"  {{{_lua_string(p)}, {_lua_string(a)}}}" for p, a in calls)
    return f"""
local calls = {{
{table}
}}
local k = 0
function init(args)
  k = thread_id * 7919
end
function request()
  k = k + 1
  local call = calls[k % #calls + 1]
  return wrk.format("GET", call[1], {{["Authorization"] = call[2]}})
end
{_DONE}"""


def set_script(
    path: str,
    tokens: Sequence[str],
    devices: Sequence[tuple[int, str]],
    body_template: str,
) -> str:
    """``POST pushers/set``: even requests create a device of the next user, odd ones re-register
    the next registered device; every body gets a fresh iss and key identifier.

    ``devices`` are ``(index into tokens, pushkey)``; ``body_template`` is the JSON body with
    ``%s`` for pushkey, iss and key identifier, in that order.
    """
    token_table = ",\n".join(f"  {_lua_string('Bearer ' + t)}" for t in tokens)
    device_table = ",\n".join(f"  {{{i + 1}, {_lua_string(p)}}}" for i, p in devices)
    return f"""
local tokens = {{
{token_table}
}}
local devices = {{
{device_table}
}}
local TEMPLATE = {_lua_string(body_template)}
{_RANDOM}
local k = 0
function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
  k = thread_id * 7919
end
function request()
  k = k + 1
  local token, pushkey
  if k % 2 == 0 then
    token = tokens[math.floor(k / 2) % #tokens + 1]
    pushkey = random_chars(B64, 40) .. "/+" .. random_chars(HEX, 8) .. "="
  else
    local device = devices[math.floor(k / 2) % #devices + 1]
    token, pushkey = tokens[device[1]], device[2]
  end
  local body = string.format(TEMPLATE, pushkey, random_chars(HEX, 64), random_chars(HEX, 32))
  return wrk.format("POST", {_lua_string(path)},
    {{["Authorization"] = token, ["Content-Type"] = "application/json"}}, body)
end
{_DONE}"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_missing() -> str | None:
    """None when wrk is installed, else how to install it."""
    if shutil.which("wrk") is None:
        return "wrk is not installed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
    return None


def run_wrk(
    base_url: str,
    script: str,
    workdir: Path,
    *,
    connections: int,
    threads: int,
    duration: float,
) -> WrkResult:
    """Run wrk with ``script`` against ``base_url``; raise RuntimeError when it reports nothing."""
    script_path = workdir / f"wrk-{time.monotonic_ns()}.lua"
    script_path.write_text(script)
    command = [
        "wrk",
        f"--connections={connections}",
        f"--threads={min(threads, connections)}",
        f"--duration={max(round(duration), 1)}s",
        "--timeout=10s",
        f"--script={script_path}",
        base_url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    for line in done.stdout.splitlines():
        if line.startswith(_MARKER):
            figures = json.loads(line.removeprefix(_MARKER))
            return WrkResult(
                requests=figures["requests"],
                seconds=figures["duration_us"] / 1e6,
                errors=figures["status_errors"] + figures["socket_errors"],
                p50_ms=figures["p50_us"] / 1000,
                p99_ms=figures["p99_us"] / 1000,
                max_ms=figures["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk reported nothing (exit {done.returncode}): {done.stderr[-500:]}")
