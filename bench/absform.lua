-- wrk script: send the request line that a proxy client sends.
--
-- bench.py sets, in wrk's environment:
--   BENCH_URL   the request target: the absolute form "http://127.0.0.1:ORIGINPORT/1k" through a proxy,
--               the origin form "/1k" when wrk talks to the origin directly;
--   BENCH_HOST  the Host header: the origin's "127.0.0.1:ORIGINPORT" (wrk would otherwise name the proxy).
-- By hand:
--   BENCH_URL=http://127.0.0.1:8080/1k BENCH_HOST=127.0.0.1:8080 wrk -c50 -d8s -s bench/absform.lua http://127.0.0.1:3128/
wrk.path = os.getenv("BENCH_URL") or wrk.path
local host = os.getenv("BENCH_HOST")
if host then
    wrk.headers["Host"] = host
end
