-- wrk script for the MISS benchmark (bench/gateway/run.sh).
--
-- Every request asks for a URL never asked for before: <path>?miss=<prefix>-<thread>-<n>,
-- so every proxy has to go to the origin (distinct query string = distinct cache key).
-- <prefix> is passed after `--` on the wrk command line and is unique per run, so
-- later rounds do not hit objects stored by earlier ones. The origin ignores the query.

local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local prefix = "x"
local n = 0

function init(args)
   prefix = args[1] or tostring(os.time())
end

function request()
   n = n + 1
   return wrk.format("GET", wrk.path .. "?miss=" .. prefix .. "-" .. tostring(tid) .. "-" .. n)
end
