-- spikeguard fleet sync: one atomic call per Envoy per sync period (docs/ARCHITECTURE.md,
-- "Fleet"). Loaded once with SCRIPT LOAD, called with EVALSHA <sha> 0 <body> through
-- webdis (PUT: the body is the last argument). The body is JSON:
--   {"e": "<envoy id>",
--    "l": [{"r": "<rule>", "w": <window ms>, "n": <requests this Envoy saw since the last sync>,
--           "k": [["<key>", <admitted>], ...]}],
--    "h": [{"r": "<rule>", "w": <window ms>, "top": <K>, "n": <the rule's requests>,
--           "k": [["<key>", <requests>], ...]}]}
-- It adds this Envoy's deltas to the fleet's totals of the current window (Redis' clock, so
-- every Envoy shares one window edge) and answers, as one JSON string:
--   {"t": <now ms>,
--    "l": [{"r": ..., "win": <window index>, "left_ms": <ms to the window's end>,
--           "mine": <requests this Envoy saw, this and the last window>, "all": <the fleet's>,
--           "k": [["<key>", <fleet total this window>], ...]}],
--    "h": [{"r": ..., "win": ..., "left_ms": ..., "cur": [["<key>", n], ...],
--           "prev": [["<key>", n], ...], "ncur": <the rule's requests this window>,
--           "nprev": <and the last>}]}
-- Keys: sg:fleet:l:<rule>:<win> (hash key -> total), sg:fleet:l:<rule>:<win>:e (hash envoy ->
-- total), sg:fleet:h:<rule>:<win> (sorted set key -> requests), ...:<win>:n (the rule's
-- requests); each expires after three
-- windows. A rule name is validated by the filter's config ([A-Za-z0-9_-]).
local req = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local envoy = tostring(req.e or '')
local out = { t = now, l = {}, h = {} }

local function sum_values(h)
  local s = 0
  local vals = redis.call('HVALS', h)
  for i = 1, #vals do s = s + tonumber(vals[i]) end
  return s
end

for _, r in ipairs(req.l or {}) do
  local w = math.max(1, math.floor(tonumber(r.w) or 1000))
  local win = math.floor(now / w)
  local base = 'sg:fleet:l:' .. r.r .. ':'
  local cur, prev = base .. win, base .. (win - 1)
  local keys = {}
  for _, kv in ipairs(r.k or {}) do
    local total = redis.call('HINCRBY', cur, kv[1], math.floor(tonumber(kv[2]) or 0))
    keys[#keys + 1] = { kv[1], total }
  end
  local n = math.floor(tonumber(r.n) or 0)
  redis.call('HINCRBY', cur .. ':e', envoy, n)
  redis.call('PEXPIRE', cur, 3 * w)
  redis.call('PEXPIRE', cur .. ':e', 3 * w)
  local mine = tonumber(redis.call('HGET', cur .. ':e', envoy) or 0)
    + tonumber(redis.call('HGET', prev .. ':e', envoy) or 0)
  local all = sum_values(cur .. ':e') + sum_values(prev .. ':e')
  out.l[#out.l + 1] = { r = r.r, win = win, left_ms = (win + 1) * w - now,
    mine = mine, all = all, k = keys }
end

local function top(z, k)
  local flat = redis.call('ZREVRANGE', z, 0, k - 1, 'WITHSCORES')
  local pairs_ = {}
  for i = 1, #flat, 2 do pairs_[#pairs_ + 1] = { flat[i], tonumber(flat[i + 1]) } end
  return pairs_
end

for _, r in ipairs(req.h or {}) do
  local w = math.max(1, math.floor(tonumber(r.w) or 1000))
  local k = math.max(1, math.floor(tonumber(r.top) or 10))
  local win = math.floor(now / w)
  local base = 'sg:fleet:h:' .. r.r .. ':'
  local cur = base .. win
  for _, kv in ipairs(r.k or {}) do
    redis.call('ZINCRBY', cur, math.floor(tonumber(kv[2]) or 0), kv[1])
  end
  redis.call('PEXPIRE', cur, 3 * w)
  local ncur = redis.call('INCRBY', cur .. ':n', math.floor(tonumber(r.n) or 0))
  redis.call('PEXPIRE', cur .. ':n', 3 * w)
  local nprev = tonumber(redis.call('GET', base .. (win - 1) .. ':n') or 0)
  out.h[#out.h + 1] = { r = r.r, win = win, left_ms = (win + 1) * w - now,
    cur = top(cur, k), prev = top(base .. (win - 1), k), ncur = ncur, nprev = nprev }
end

return cjson.encode(out)
