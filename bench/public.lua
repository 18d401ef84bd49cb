-- wrk script for bench/public.py: the holder of a slot asks again (a re-lock: 200, a read
-- that writes nothing), in self-hosted mode, for one tenant, or for many tenants.
-- Args: <mode> <token or tokens file>; run with -t N -c N (one connection per
-- thread). Headers are zincati's: fleet-lock-protocol and accept, nothing else.
--   self   POST /v1/pre-reboot, group "g<thread>" (self-hosted mode; the token is unused)
--   one    POST /t/<token>/v1/pre-reboot, group "g<thread>": one tenant, a group per thread
--          (so that no two connections share a group: no coalescing in either case)
--   many   POST /t/<random token of the file>/v1/pre-reboot, group "g"

local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local function body(group)
  return string.format(
    '{\n  "client_params": {\n    "id": "holder",\n    "group": "%s"\n  }\n}', group)
end

function init(args)
  mode, source = args[1], args[2]
  wrk.method = "POST"
  wrk.headers["fleet-lock-protocol"] = "true"
  wrk.headers["accept"] = "*/*"
  if mode == "self" then
    fixed = wrk.format(nil, "/v1/pre-reboot", nil, body("g" .. tid))
  elseif mode == "one" then
    fixed = wrk.format(nil, "/t/" .. source .. "/v1/pre-reboot", nil, body("g" .. tid))
  elseif mode == "many" then
    tokens = {}
    for line in io.lines(source) do
      tokens[#tokens + 1] = line
    end
    math.randomseed(tid + 1)
    group_body = body("g")
  else
    error("unknown mode " .. tostring(mode))
  end
end

function request()
  if fixed then
    return fixed
  end
  local token = tokens[math.random(#tokens)]
  return wrk.format(nil, "/t/" .. token .. "/v1/pre-reboot", nil, group_body)
end
