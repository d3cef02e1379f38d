-- POST /v1/events with one unique Purchase event per request (Bearer ingest key).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local c = require("common")

setup = c.setup
done = c.done

function init(args)
  c.init(args)
  wrk.method = "POST"
  wrk.path = "/v1/events"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. c.key
  now = os.time()
end

local function event(n)
  local i = n % 10000
  return string.format(
    '{"event_name":"Purchase","event_time":%d,"event_id":"w%s%d","action_source":"website",'
      .. '"event_source_url":"https://shop.bench.example/thanks","user_data":{'
      .. '"email":"shopper%d@example.com","phone":"+1 650 555 %04d",'
      .. '"client_ip_address":"203.0.%d.%d","client_user_agent":"Mozilla/5.0 (bench)",'
      .. '"fbp":"fb.1.1700000000000.%d"},"custom_data":{"value":%d.5,"currency":"USD"}}',
    now, c.prefix, n, n, i, math.floor(n / 256) % 256, n % 256, n, 10 + n % 90)
end
c.event = event

function request()
  local body = '{"pixel_id":"' .. c.pixel .. '","data":[' .. event(c.next()) .. ']}'
  return wrk.format(nil, nil, nil, body)
end
