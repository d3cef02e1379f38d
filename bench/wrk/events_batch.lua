-- POST /v1/events with 100 unique Purchase events per request (Bearer ingest key).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local c = require("common")
dofile(here .. "events_single.lua")

BATCH = 100

function request()
  local parts = {}
  for k = 1, BATCH do
    parts[k] = c.event(c.next())
  end
  local body = '{"pixel_id":"' .. c.pixel .. '","data":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format(nil, nil, nil, body)
end
