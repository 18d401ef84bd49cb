-- wrk script for bench/throughput.py: one hot path of the FleetLock protocol.
-- Args: <mode> <group prefix>; mode is relock | refuse | cycle.
-- "cycle" needs as many threads as connections (-t N -c N): each thread then owns one
-- connection, so a thread's grant and release reach the server in order. With fewer
-- threads a thread's connections would share its group and its request() sequence, and a
-- release could overtake its grant (bench/throughput.py refuses that); "relock" and
-- "refuse" write nothing and may run with any number of threads.
-- Headers are zincati's: fleet-lock-protocol and accept, no content-type, no user-agent.

local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local function body(id, group)
  return string.format(
    '{\n  "client_params": {\n    "id": "%s",\n    "group": "%s"\n  }\n}', id, group)
end

function init(args)
  local mode, prefix = args[1], args[2]
  wrk.method = "POST"
  wrk.headers["fleet-lock-protocol"] = "true"
  wrk.headers["accept"] = "*/*"
  if mode == "relock" then
    -- "holder" already holds the group's only slot: a read that writes nothing.
    reqs = { wrk.format(nil, "/v1/pre-reboot", nil, body("holder", prefix .. "relock")) }
  elseif mode == "refuse" then
    -- the only slot is taken: every waiter gets 423, and nothing is written.
    reqs = { wrk.format(nil, "/v1/pre-reboot", nil,
                        body("waiter" .. tid, prefix .. "full")) }
  elseif mode == "cycle" then
    -- a grant and a release on this thread's own group: two writes per cycle.
    local id, group = "cycler" .. tid, prefix .. "cycle" .. tid
    reqs = { wrk.format(nil, "/v1/pre-reboot", nil, body(id, group)),
             wrk.format(nil, "/v1/steady-state", nil, body(id, group)) }
  else
    error("unknown mode " .. tostring(mode))
  end
  n = 0
end

function request()
  n = n + 1
  return reqs[(n - 1) % #reqs + 1]
end
