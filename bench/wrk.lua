-- Sends the raw HTTP requests bench.ts wrote, one file per wrk thread, and prints a JSON summary.
-- Usage: wrk -t N ... -s bench/wrk.lua <url> -- <file prefix> <cycle|once>
-- <prefix>.<thread id> holds complete requests, each followed by a NUL byte. "cycle" repeats them;
-- "once" sends each at most once, because a repeated webhook is acknowledged as a duplicate
-- instead of being verified and handled.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

local data, position, cycle, last
exhausted = false

function init(args)
  -- One read and no parsing: wrk starts thread 1 while thread 2 is still in init(), so a slow
  -- init() would hand thread 1 requests that the measured duration does not include.
  local file = assert(io.open(args[1] .. "." .. id, "rb"))
  data = file:read("*a")
  file:close()
  position = 1
  cycle = args[2] == "cycle"
end

function request()
  if position > #data then
    if not cycle then
      -- Out of distinct requests: stop; bench.ts discards this run (the resend is a duplicate).
      exhausted = true
      wrk.thread:stop()
      return last
    end
    position = 1
  end
  local ending = data:find("\0", position, true)
  last = data:sub(position, ending - 1)
  position = ending + 1
  return last
end

function done(summary, latency)
  local exhausted_threads = 0
  for _, thread in ipairs(threads) do
    if thread:get("exhausted") then exhausted_threads = exhausted_threads + 1 end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"durationUs":%d,"p50Us":%d,"p99Us":%d,"statusErrors":%d,' ..
      '"socketErrors":%d,"exhaustedThreads":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout, exhausted_threads))
end
