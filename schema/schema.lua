-- Konnect custom-plugin schema for the ping_auth Wasm filter.
--
-- GENERATED from src/config.rs (FIELDS) by
--   cargo run -p ping-auth-harness --bin gen-schema
-- Do not edit by hand: `gen-schema --check` (make lint) fails when this file is stale.
--
-- Upload it to a Konnect control plane (kong/konnect.md). The data planes run the
-- filter itself (ping_auth.wasm, Kong 3.9 / 3.10 with wasm = on), not a Lua plugin:
-- never install this file as a Lua plugin next to the filter, Kong refuses a Lua
-- plugin and a filter with the same name.
--
-- Self-contained on purpose (Konnect accepts no require() in schema.lua); the
-- validators implement the same rules as config::parse in src/config.rs.

local null = ngx.null


-- http(s)://host[:port][/path][?query], as config::parse_url: scheme http or https
-- in any case; host = letters, digits, . _ ~ - or a bracketed IPv6 literal; port
-- 1..65535 without leading zero; no user@, no #fragment, no white space.
local function url_error(url)
  local s, e = url:find("://", 1, true)
  if not s then
    if url:sub(1, 4):lower() == "http" then
      return "URL must start with http:// or https://"
    end
    return "URL scheme must be either 'http' or 'https'"
  end
  local scheme = url:sub(1, s - 1):lower()
  if scheme ~= "http" and scheme ~= "https" then
    return "URL scheme must be either 'http' or 'https'"
  end
  local rest = url:sub(e + 1)
  local auth_end = rest:find("[/?]") or (#rest + 1)
  local authority = rest:sub(1, auth_end - 1)
  local tail = rest:sub(auth_end)
  if authority == "" then
    return "URL host cannot be blank"
  end
  if authority:find("@", 1, true) then
    return "URL must not contain credentials (user@host)"
  end
  local host, port
  if authority:sub(1, 1) == "[" then
    local close = authority:find("]", 1, true)
    if not close then
      return "URL host has an unterminated IPv6 literal"
    end
    host = authority:sub(1, close)
    local inner = host:sub(2, -2)
    if inner == "" or inner:find("[^0-9A-Fa-f:%.]") then
      return "URL host is not a valid IPv6 literal"
    end
    local after = authority:sub(close + 1)
    if after ~= "" then
      if after:sub(1, 1) ~= ":" then
        return "URL host is followed by garbage"
      end
      port = after:sub(2)
    end
  else
    local colon = authority:find(":", 1, true)
    if colon then
      host, port = authority:sub(1, colon - 1), authority:sub(colon + 1)
    else
      host = authority
    end
    if host == "" then
      return "URL host cannot be blank"
    end
    if host:find("[^A-Za-z0-9%._~%-]") then
      return "URL host may contain only letters, digits, '.', '-', '_' and '~'"
    end
  end
  if port ~= nil then
    if port == "" or #port > 5 or port:find("[^0-9]") or port:sub(1, 1) == "0"
       or tonumber(port) > 65535 then
      return "URL port must be a number from 1 to 65535, got '" .. port .. "'"
    end
  end
  if tail:find("#", 1, true) then
    return "URL must not contain a fragment (#)"
  end
  if tail:find("[^!-~]") then
    return "URL path and query must be printable ASCII without spaces (percent-encode other characters)"
  end
  return nil
end

local function validate_url(value)
  local err = url_error(value)
  if err then
    return nil, err
  end
  return true
end

-- An RFC 9110 token, as config::is_token.
local function validate_header_name(value)
  if value:find("[^A-Za-z0-9!#$%%&'*+%-.^_`|~]") then
    return nil, "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
  end
  return true
end

-- mode, as config::MODE_RULE.
local function validate_mode(value)
  if value ~= "enforce" and value ~= "shadow" then
    return nil, "must be \"enforce\" or \"shadow\""
  end
  return true
end

-- on_<failure class>, as config::FAILURE_ACTION_RULE.
local function validate_failure_action(value)
  if value == "deny" or value == "allow" then
    return true
  end
  local code = value:match("^deny:([45]%d%d)$")
  if not code then
    return nil, "must be \"deny\", \"deny:<status 400-599>\" or \"allow\", got \"" .. value .. "\""
  end
  return true
end

-- fail_open_methods, as config::METHODS_RULE.
local function validate_methods(value)
  for item in (value .. ","):gmatch("([^,]*),") do
    if not item:match("^ *%u+ *$") then
      return nil, "must be upper-case method names separated by commas, e.g. \"GET,HEAD,OPTIONS\""
    end
  end
  return true
end

local function validate_secret(value)
  if value:find("\r", 1, true) or value:find("\n", 1, true) or value:find("\0", 1, true) then
    return nil, "must not contain CR, LF or NUL (it is sent as a header value)"
  end
  return true
end

-- A header list, as config::parse: no name twice, compared case-insensitively (the
-- items are checked by validate_header_name first).
local function validate_header_list(value)
  local seen = {}
  for _, name in ipairs(value) do
    local lower = name:lower()
    if seen[lower] then
      return nil, "must not contain a header name twice (header names are case-insensitive): " .. lower
    end
    seen[lower] = true
  end
  return true
end

-- cache, as config::parse: an enabled cache whose key selects nothing is refused. A
-- part that is nil or null takes its default.
local function validate_cache(value)
  local function part(name, default)
    local v = value[name]
    if v == nil or v == null then
      return default
    end
    return v
  end
  if part("enabled", false) ~= true then
    return true
  end
  if part("key_method", true) or part("key_path", true) or part("key_client_ip", false) or part("key_body", false) then
    return true
  end
  if #part("key_headers", { "authorization" }) > 0 then
    return true
  end
  return nil, "the cache key selects nothing: every request would share one decision"
end

return {
  name = "ping_auth",
  fields = {
    -- Kong 3.9 / 3.10 filter plugins refuse consumer scoping and need a service or
    -- a route (entity_checks below).
    { consumer = { type = "foreign", reference = "consumers", eq = null } },
    { protocols = {
        type = "set",
        required = true,
        default = { "http", "https" },
        elements = { type = "string", one_of = { "http", "https" } },
    } },
    { config = {
        type = "record",
        fields = {
          -- Lua ping-auth: same field
          { service_url = {
              type = "string",
              required = true,
              custom_validator = validate_url,
              description = "Base URL of the policy provider (PingAuthorize, PingOne Authorize, PingAccess), without /sideband. http or https, host, optional port, path and query.",
          } },
          -- Lua ping-auth: same field
          { shared_secret = {
              type = "string",
              required = true,
              referenceable = true,
              encrypted = true,
              custom_validator = validate_secret,
              description = "Shared secret sent in the secret_header_name header of every sideband call.",
          } },
          -- Lua ping-auth: same field
          { secret_header_name = {
              type = "string",
              required = true,
              custom_validator = validate_header_name,
              description = "Name of the header that carries the shared secret (Ping products default to CLIENT-TOKEN).",
          } },
          -- Lua ping-auth: same field
          { connection_timeout_ms = {
              type = "integer",
              between = { 1, 2147483647 },
              required = false,
              default = 10000,
              description = "Timeout of each sideband call in milliseconds, applied by the host to connect, send and read separately.",
          } },
          -- Lua ping-auth: same field
          { connection_keepAlive_ms = {
              type = "integer",
              between = { 1, 2147483647 },
              required = false,
              default = 60000,
              description = "Accepted for compatibility; Kong's Wasm host opens one connection per sideband call (no keep-alive).",
          } },
          -- Lua ping-auth: same field
          { verify_service_certificate = {
              type = "boolean",
              required = false,
              default = true,
              description = "Accepted for compatibility; certificate verification of sideband calls is the host's global wasm TLS setting (nginx_wasm_tls_verify_cert / _host / _trusted_certificate).",
          } },
          -- Lua ping-auth: same field
          { enable_debug_logging = {
              type = "boolean",
              required = false,
              default = false,
              description = "Log each sideband exchange at debug level (secret and credential headers redacted, bodies cut).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { enable_response_hook = {
              type = "boolean",
              required = false,
              default = true,
              description = "Send the upstream response to /sideband/response and answer with the policy's version. On Kong the filter then calls the upstream itself; false = request hook only, Kong proxies as usual.",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { upstream_url = {
              type = "string",
              required = false,
              custom_validator = validate_url,
              description = "Upstream for the response hook on hosts without Kong's router properties (kong.router.service). Inside Kong the routed service is used and this is ignored.",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { upstream_timeout_ms = {
              type = "integer",
              between = { 1, 2147483647 },
              required = false,
              description = "Timeout of the response hook's upstream call in milliseconds. Default: the Kong service's longest connect/write/read timeout, else 60000.",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { max_response_body_bytes = {
              type = "integer",
              between = { 1, 67108864 },
              required = false,
              default = 1048576,
              description = "Largest upstream response body the response hook buffers and sends to the policy provider; a larger one is answered with 502 (never truncated).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { mode = {
              type = "string",
              required = false,
              default = "enforce",
              custom_validator = validate_mode,
              description = "enforce: the policy's decisions apply. shadow: the policy server is called as in enforce mode, but the client and the upstream see the original request and response whatever it answers; what would have happened is logged (one line per request).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { on_unreachable = {
              type = "string",
              required = false,
              default = "deny",
              custom_validator = validate_failure_action,
              description = "When the policy server cannot be reached, times out, or fails the TLS handshake: deny (status 502), deny:<status> (400-599), or allow (the request goes on unchanged, for fail_open_methods only, marked with fail_open_header).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { on_server_error = {
              type = "string",
              required = false,
              default = "deny",
              custom_validator = validate_failure_action,
              description = "When the policy server answers 5xx: deny (status 502), deny:<status> (400-599), or allow (the request goes on unchanged, for fail_open_methods only, marked with fail_open_header).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { on_client_error = {
              type = "string",
              required = false,
              default = "deny",
              custom_validator = validate_failure_action,
              description = "When the policy server answers 4xx other than 413 and 429 (e.g. 401 for a wrong shared secret): deny (status 502), deny:<status> (400-599), or allow (the request goes on unchanged, for fail_open_methods only, marked with fail_open_header).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { on_malformed_reply = {
              type = "string",
              required = false,
              default = "deny",
              custom_validator = validate_failure_action,
              description = "When the policy server's reply is not JSON or not a valid reply: deny (status 502), deny:<status> (400-599), or allow (the request goes on unchanged, for fail_open_methods only, marked with fail_open_header).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { on_rate_limited = {
              type = "string",
              required = false,
              default = "deny",
              custom_validator = validate_failure_action,
              description = "When the policy server answers 429, or its back-off is running: deny (status 429), deny:<status> (400-599), or allow (the request goes on unchanged, for fail_open_methods only, marked with fail_open_header).",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { fail_open_methods = {
              type = "string",
              required = false,
              default = "GET,HEAD,OPTIONS",
              custom_validator = validate_methods,
              description = "Methods an on_* = allow applies to, separated by commas; other methods are denied as with deny.",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { fail_open_header = {
              type = "string",
              required = false,
              default = "x-ping-auth-fail-open",
              custom_validator = validate_header_name,
              description = "Header the upstream receives on a request let through by an on_* = allow; its value is the failure class. A client's own header of that name is removed.",
          } },
          -- added by ping_auth (not in the Lua plugin)
          { cache = {
              type = "record",
              required = true,
              custom_validator = validate_cache,
              description = "Decision cache, in memory per worker: a request whose key matches an earlier one gets that decision without a sideband call. The key parts are hashed with SHA-256 together with the configuration's identity; the request's key material is never stored in clear.",
              fields = {
                  { enabled = {
                      type = "boolean",
                      required = false,
                      default = false,
                      description = "Turn the decision cache on (it is opt-in). It is used only with enable_response_hook = false and mode = enforce; otherwise every request still goes to the policy server.",
                  } },
                  { ttl_seconds = {
                      type = "integer",
                      between = { 1, 86400 },
                      required = false,
                      default = 60,
                      description = "Longest time in seconds a decision is reused. The policy reply's own Cache-Control (max-age, s-maxage) can only shorten it; no-store, no-cache, private or max-age=0 means the decision is not stored.",
                  } },
                  { max_entries = {
                      type = "integer",
                      between = { 1, 100000 },
                      required = false,
                      default = 10000,
                      description = "Most decisions kept, per worker; when the cache is full the least recently used entry is evicted.",
                  } },
                  { stale_if_error_seconds = {
                      type = "integer",
                      between = { 0, 86400 },
                      required = false,
                      default = 0,
                      description = "How long in seconds after expiry a cached allow may still be served when the policy server is unreachable, times out or answers 5xx (0 = never).",
                  } },
                  { cache_denies = {
                      type = "boolean",
                      required = false,
                      default = false,
                      description = "Also cache denies: the policy's deny response is replayed to later requests with the same key. false = only allows are cached.",
                  } },
                  { key_method = {
                      type = "boolean",
                      required = false,
                      default = true,
                      description = "The request method is part of the cache key.",
                  } },
                  { key_path = {
                      type = "boolean",
                      required = false,
                      default = true,
                      description = "The request path is part of the cache key.",
                  } },
                  { key_query = {
                      type = "boolean",
                      required = false,
                      default = true,
                      description = "The query string is part of the cache key (only when key_path is true).",
                  } },
                  { key_headers = {
                      type = "array",
                      elements = { type = "string", custom_validator = validate_header_name },
                      len_max = 16,
                      required = false,
                      default = { "authorization" },
                      custom_validator = validate_header_list,
                      description = "Names of the request headers whose values are part of the cache key (case-insensitive, each at most once). The default keeps the decisions of different credentials apart.",
                  } },
                  { key_client_ip = {
                      type = "boolean",
                      required = false,
                      default = false,
                      description = "The client's IP address is part of the cache key.",
                  } },
                  { key_body = {
                      type = "boolean",
                      required = false,
                      default = false,
                      description = "A SHA-256 of the request body is part of the cache key; without it, requests with a body are never cached.",
                  } },
              },
          } },
        },
    } },
  },
  entity_checks = {
    { mutually_exclusive = { "service", "route" } },
    { at_least_one_of = { "service", "route" } },
  },
}
