"""Lua scripts of the baseline service: every check-and-change runs atomically in Redis.

``@P@`` is replaced by the key prefix, ``@MAXQ@``/``@MAXL@`` by the cart limits.
"""

from __future__ import annotations

# Stock hash  {P}stock:{sku}  fields on_hand, reserved, version
# Expiries    {P}rexp:{sku}   zset, member "rid|qty", score = expires_at (ms)
# Reservation {P}res:{rid}    hash sku, qty, status, expires_at, ref (TTL)
# Cart hash   {P}cart:{uid}   q:{sku} -> qty, m:{sku} -> "added|updated|at_ms",
#                             _v version, _t updated_at (ms), _n line count

_PURGE = """
local function purge(stock, rexp, now)
  local gone = redis.call('ZRANGEBYSCORE', rexp, '-inf', now, 'LIMIT', 0, 200)
  if #gone == 0 then return end
  local back = 0
  for _, m in ipairs(gone) do
    back = back + tonumber(string.match(m, '|(%d+)$'))
  end
  redis.call('ZREM', rexp, unpack(gone))
  redis.call('HINCRBY', stock, 'reserved', -back)
  redis.call('HINCRBY', stock, 'version', 1)
end
"""

STOCK_SET = (
    _PURGE
    + """
purge(KEYS[1], KEYS[2], ARGV[2])
local on_hand = tonumber(ARGV[1])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if on_hand < reserved then return {-1, reserved} end
redis.call('HSET', KEYS[1], 'on_hand', on_hand, 'reserved', reserved)
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
return {0, on_hand, reserved, v}
"""
)

STOCK_GET = (
    _PURGE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
purge(KEYS[1], KEYS[2], ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'on_hand', 'reserved', 'version')
return {0, tonumber(s[1]), tonumber(s[2]), tonumber(s[3])}
"""
)

RESERVE = (
    _PURGE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local now = tonumber(ARGV[3])
purge(KEYS[1], KEYS[2], now)
local qty = tonumber(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'on_hand', 'reserved')
local available = tonumber(s[1]) - tonumber(s[2])
if available < qty then return {-1, available} end
redis.call('HINCRBY', KEYS[1], 'reserved', qty)
redis.call('HINCRBY', KEYS[1], 'version', 1)
local expires = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[4] .. '|' .. qty)
redis.call('HSET', KEYS[3], 'sku', ARGV[5], 'qty', qty, 'status', 'held',
           'expires_at', expires, 'ref', ARGV[6])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) + 3600000)
return {0, expires}
"""
)

_VIEW = """
local function view(cart)
  local h = redis.call('HGETALL', cart)
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = h[i + 1] end
  local out = {f['_v'] or '0', f['_t'] or ''}
  for i = 1, #h, 2 do
    local name = h[i]
    if string.sub(name, 1, 2) == 'q:' then
      local sku = string.sub(name, 3)
      local s = redis.call('HMGET', '@P@stock:' .. sku, 'on_hand', 'reserved')
      out[#out + 1] = sku
      out[#out + 1] = h[i + 1]
      out[#out + 1] = f['m:' .. sku] or ''
      out[#out + 1] = tonumber(s[1] or '0') - tonumber(s[2] or '0')
    end
  end
  return out
end
"""

CART_GET = (
    _VIEW
    + """
return view(KEYS[1])
"""
)

CART_ADD = (
    _VIEW
    + """
local sku, qty, channel, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local s = redis.call('HMGET', KEYS[2], 'on_hand', 'reserved')
if not s[1] then return {-2} end
local available = tonumber(s[1]) - tonumber(s[2] or '0')
local cur = tonumber(redis.call('HGET', KEYS[1], 'q:' .. sku) or '0')
if cur + qty > available then return {-1, available} end
if cur + qty > @MAXQ@ then return {-3} end
local added = channel
if cur == 0 then
  if tonumber(redis.call('HGET', KEYS[1], '_n') or '0') >= @MAXL@ then return {-4} end
  redis.call('HINCRBY', KEYS[1], '_n', 1)
else
  local m = redis.call('HGET', KEYS[1], 'm:' .. sku) or ''
  added = string.match(m, '^([^|]*)') or channel
end
redis.call('HINCRBY', KEYS[1], 'q:' .. sku, qty)
redis.call('HSET', KEYS[1], 'm:' .. sku, added .. '|' .. channel .. '|' .. now, '_t', now)
redis.call('HINCRBY', KEYS[1], '_v', 1)
return {0, view(KEYS[1])}
"""
)
