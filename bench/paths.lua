-- wrk script: GET a list of paths round-robin, so a run fetches DISTINCT URLs (frames), not one URL repeated.
-- Usage: wrk ... -s bench/paths.lua URL -- PATHS_FILE THREADS   (headers with wrk's own -H)
-- Thread i (1-based) takes paths i, i+T, i+2T, ... so threads never fetch the same path at the same moment;
-- a thread that reaches the end starts over and counts a "wrap" (a first-pass run must report 0 wraps).
-- done() prints one line starting with WRKJSON that bench/common.py parses.

local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  nthreads = tonumber(args[2])
  reqs = {}
  for line in io.lines(file) do
    if line ~= "" then
      table.insert(reqs, wrk.format("GET", line))
    end
  end
  n = #reqs
  pos = id
  wraps = 0
end

function request()
  local r = reqs[pos]
  pos = pos + nthreads
  if pos > n then
    pos = id
    wraps = wraps + 1
  end
  return r
end

function done(summary, latency, _)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"wraps":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, w))
end
