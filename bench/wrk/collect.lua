-- POST /v1/collect, one unique AddToCart beacon per request, as a browser sends it:
-- text/plain (no preflight), a browser User-Agent, the shop's Origin and an _fbp cookie.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local c = require("common")

setup = c.setup
done = c.done

function init(args)
  c.init(args)
  wrk.method = "POST"
  wrk.path = "/v1/collect"
  wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
  wrk.headers["Origin"] = c.origin
  wrk.headers["User-Agent"] =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      .. "Chrome/124.0 Safari/537.36"
  wrk.headers["Referer"] = "https://shop.bench.example/product"
end

function request()
  local n = c.next()
  local body = string.format(
    '{"pixel_id":"%s","event_name":"AddToCart","event_id":"c%s%d",'
      .. '"page_url":"https://shop.bench.example/p/%d?fbclid=IwAR%d",'
      .. '"custom_data":{"value":5.0,"currency":"USD"}}',
    c.pixel, c.prefix, n, n, n)
  -- wrk.format replaces wrk.headers when given a table: carry them over, then the cookie.
  local headers = {}
  for k, v in pairs(wrk.headers) do
    headers[k] = v
  end
  headers["Cookie"] = "_fbp=fb.1.1700000000000." .. n
  return wrk.format(nil, nil, headers, body)
end
