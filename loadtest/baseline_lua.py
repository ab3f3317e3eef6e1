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

# Product     {P}product:{sku}  hash title, price, category, version, updated_at (ms)
# Order       {P}order:{oid}    hash uid, status, channel, fulfilment, lines (JSON),
#                               subtotal, discount, total, points_earned, pay_by,
#                               created_at, paid_at, payment_ref, version
#             each line's stock is held as a reservation "{oid}:{i}|{qty}" in the SKU's
#             {P}rexp zset, score pay_by: purge() gives it back once pay_by has passed
# Member      {P}member:{uid}   hash points, spend, version

# KEYS: order, then per line stock, rexp, product
# ARGV: now, pay_by, oid, uid, channel, fulfilment, then per line sku, qty
CHECKOUT = (
    _PURGE
    + """
local now, pay_by, oid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local n = (#KEYS - 1) / 3
local lines, short = {}, {}
local subtotal = 0
for i = 1, n do
  local stock, rexp, product = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local sku, qty = ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i])
  local price = redis.call('HGET', product, 'price')
  if not price then return {-2, sku} end
  price = tonumber(price)
  local available = 0
  if redis.call('EXISTS', stock) == 1 then
    purge(stock, rexp, now)
    local s = redis.call('HMGET', stock, 'on_hand', 'reserved')
    available = tonumber(s[1]) - tonumber(s[2])
  end
  if available < qty then
    short[#short + 1] = cjson.encode({sku = sku, requested = qty,
                                      available = math.max(available, 0)})
  end
  lines[i] = {sku = sku, qty = qty, unit_price = price, discount = 0, total = price * qty}
  subtotal = subtotal + price * qty
end
if #short > 0 then return {-1, '[' .. table.concat(short, ',') .. ']'} end
for i = 1, n do
  local stock, rexp = KEYS[3 * i - 1], KEYS[3 * i]
  local qty = lines[i].qty
  redis.call('HINCRBY', stock, 'reserved', qty)
  redis.call('HINCRBY', stock, 'version', 1)
  redis.call('ZADD', rexp, pay_by, oid .. ':' .. i .. '|' .. qty)
end
redis.call('HSET', KEYS[1], 'uid', ARGV[4], 'status', 'pending', 'channel', ARGV[5],
           'fulfilment', ARGV[6], 'lines', cjson.encode(lines), 'subtotal', subtotal,
           'discount', 0, 'total', subtotal, 'points_earned', 0, 'pay_by', pay_by,
           'created_at', now, 'version', 1)
return {0, redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: order.  ARGV: now, payment_ref, channel.  The line, stock, member and cart keys
# come from the order itself (like the cart view's stock keys), so one round trip.
# Answers {0, order}, {-2} unknown, {-3, status} not pending, {-4, order} expired.
PAY = """
local o, now = KEYS[1], tonumber(ARGV[1])
local f = redis.call('HMGET', o, 'status', 'pay_by', 'uid', 'total', 'lines')
if not f[1] then return {-2} end
if f[1] ~= 'pending' then return {-3, f[1]} end
local oid = string.sub(o, string.len('@P@order:') + 1)
local lines = cjson.decode(f[5])
local held = true
for i, line in ipairs(lines) do
  if not redis.call('ZSCORE', '@P@rexp:' .. line.sku, oid .. ':' .. i .. '|' .. line.qty) then
    held = false
  end
end
if now >= tonumber(f[2]) or not held then
  for i, line in ipairs(lines) do
    local stock = '@P@stock:' .. line.sku
    if redis.call('ZREM', '@P@rexp:' .. line.sku, oid .. ':' .. i .. '|' .. line.qty) == 1 then
      redis.call('HINCRBY', stock, 'reserved', -line.qty)
      redis.call('HINCRBY', stock, 'version', 1)
    end
  end
  redis.call('HSET', o, 'status', 'expired')
  redis.call('HINCRBY', o, 'version', 1)
  return {-4, redis.call('HGETALL', o)}
end
local cart = '@P@cart:' .. f[3]
local removed = 0
for i, line in ipairs(lines) do
  local stock = '@P@stock:' .. line.sku
  redis.call('ZREM', '@P@rexp:' .. line.sku, oid .. ':' .. i .. '|' .. line.qty)
  redis.call('HINCRBY', stock, 'on_hand', -line.qty)
  redis.call('HINCRBY', stock, 'reserved', -line.qty)
  redis.call('HINCRBY', stock, 'version', 1)
  removed = removed + redis.call('HDEL', cart, 'q:' .. line.sku)
  redis.call('HDEL', cart, 'm:' .. line.sku)
end
if removed > 0 then
  redis.call('HINCRBY', cart, '_n', -removed)
  redis.call('HSET', cart, '_t', now)
  redis.call('HINCRBY', cart, '_v', 1)
end
local total = tonumber(f[4])
local points = math.floor(total / 100)
local member = '@P@member:' .. f[3]
redis.call('HINCRBY', member, 'points', points)
redis.call('HINCRBY', member, 'spend', total)
redis.call('HINCRBY', member, 'version', 1)
redis.call('HSET', o, 'status', 'paid', 'paid_at', now, 'payment_ref', ARGV[2],
           'paid_via', ARGV[3], 'points_earned', points)
redis.call('HINCRBY', o, 'version', 1)
return {0, redis.call('HGETALL', o)}
"""
