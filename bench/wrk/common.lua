-- Shared by the capirelay ingest wrk scripts: unique ids per thread and request, and one
-- machine-readable summary line that bench/ingest_wrk.py parses.
--
-- Arguments (after `--` on the wrk command line): run_id ingest_key pixel_id origin
-- run_id makes every event id unique across runs against the same database.

local M = {}

local threads = {}
local counter = 0

function M.setup(thread)
  thread:set("thread_no", #threads + 1)
  table.insert(threads, thread)
end

function M.init(args)
  M.run_id = args[1] or "run"
  M.key = args[2] or "bench-ingest-key"
  M.pixel = args[3] or "1234567890"
  M.origin = args[4] or "http://shop.bench.example"
  M.prefix = M.run_id .. "-" .. tostring(thread_no or 0) .. "-"
end

-- A fresh number per call, unique within this thread; with the thread number and the
-- run id in M.prefix, unique across the run.
function M.next()
  counter = counter + 1
  return counter
end

function M.done(summary, latency, requests)
  local s = summary
  local non2xx = s.errors.status
  io.write(string.format(
    "WRK_SUMMARY requests=%d duration_us=%d bytes=%d connect_errors=%d read_errors=%d "
      .. "write_errors=%d timeouts=%d non2xx=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.timeout, non2xx, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end

return M
