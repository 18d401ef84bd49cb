-- wrk script for bench/tls.py: bench/throughput.lua's requests, optionally one per connection.
-- Args: <mode> <group prefix> [close]; with "close" every request carries
-- `Connection: close`, so lockd answers and closes and wrk connects again for the next one
-- (over TLS, wrk resumes the previous session on that new connection: bench/tls.py checks).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "throughput.lua")
local base_init = init

function init(args)
  if args[3] == "close" then
    wrk.headers["Connection"] = "close"
  end
  base_init(args)
end
