-- wrk script: POST JSON bodies that alternate between two models.
-- usage: wrk -s bench/post.lua URL -- PATH BODY_FILE_A BODY_FILE_B
-- Both requests are formatted once in init(); request() only alternates between them.

local requests = {}
local turn = 0

local function slurp(path)
    local handle = assert(io.open(path, "rb"))
    local data = handle:read("*a")
    handle:close()
    return data
end

function init(args)
    local path = args[1] or "/v1/chat/completions"
    local headers = { ["Content-Type"] = "application/json" }
    for i = 2, #args do
        requests[#requests + 1] = wrk.format("POST", path, headers, slurp(args[i]))
    end
end

function request()
    turn = turn % #requests + 1
    return requests[turn]
end

-- One machine-readable line for bench/run.py; latencies in microseconds.
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
        .. '"mean_us": %.1f, "max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
        summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
