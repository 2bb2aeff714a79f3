-- wrk script of bench/ingest.py: each thread posts its share of pre-generated envelopes (one
-- compact JSON envelope a line in the file named after `--`), in turn, with the Authorization
-- header given, and counts answers by status. done() prints one JSON line for the bench.
--   wrk -t2 -c16 -d10s -s bench/ingest.lua URL -- ENVELOPES_FILE TOKEN THREADS

local threads = {}
local counter = 0

function setup(thread)
   thread:set("index", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local path, token, thread_count = args[1], args[2], tonumber(args[3])
   local headers = {
      ["Content-Type"] = "application/vnd.docker.distribution.events.v1+json",
      ["Authorization"] = "Bearer " .. token,
   }
   -- Thread k of n takes lines k, k+n, k+2n...: no envelope is sent by two threads.
   posts, statuses, next_post = {}, {}, 1
   local line_number = 0
   for line in io.lines(path) do
      if line_number % thread_count == index then
         table.insert(posts, wrk.format("POST", wrk.path, headers, line))
      end
      line_number = line_number + 1
   end
   if #posts == 0 then
      error("no envelopes for thread " .. index .. " in " .. path)
   end
end

function request()
   local post = posts[next_post]
   next_post = next_post % #posts + 1
   return post
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + n
      end
   end
   local parts = {}
   for status, n in pairs(counts) do
      table.insert(parts, string.format('"%d": %d', status, n))
   end
   local e = summary.errors
   io.write(string.format(
      'INGEST_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d, '
         .. '"statuses": {%s}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.timeout, e.status, table.concat(parts, ", ")
   ))
end
