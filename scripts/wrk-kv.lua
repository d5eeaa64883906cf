-- wrk script: PUT or GET /kv/bench-<n> with 100-byte values over a fixed key space.
-- Usage: wrk -s scripts/wrk-kv.lua ... -- put|get [keys]
local counter = 0
local mode, keys
local value = string.rep("v", 100)

function init(args)
  mode = args[1] or "put"
  keys = tonumber(args[2] or "10000")
end

function request()
  counter = counter + 1
  local path = "/kv/bench-" .. (counter % keys)
  if mode == "put" then
    return wrk.format("PUT", path, { ["Content-Type"] = "text/plain" }, value)
  end
  return wrk.format("GET", path)
end
