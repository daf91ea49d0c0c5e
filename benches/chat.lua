-- wrk script: POST an OpenAI chat completion.
-- Environment:
--   MODEL    the model id (default flux-fast)
--   KEY      sent as "Authorization: Bearer KEY" when set
--   BODY_KB  the request body size in KiB (default 1): a system prompt and one long user
--            message of plain prose paragraphs, cut so the whole JSON body is this size
--   STREAM   1: "stream": true with stream_options.include_usage (default 0)
--   HEADERS  extra request headers, one "Name: value" per line
-- Non-2xx answers are counted by wrk itself ("Non-2xx or 3xx responses"); there is no
-- response() callback, so wrk does not buffer bodies it does not need.
local model = os.getenv("MODEL") or "flux-fast"
local key = os.getenv("KEY") or ""
local body_kb = tonumber(os.getenv("BODY_KB") or "1") or 1
local stream = os.getenv("STREAM") == "1"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
for line in (os.getenv("HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^%s*([^:]-)%s*:%s*(.-)%s*$")
  if name and name ~= "" then
    wrk.headers[name] = value
  end
end

-- Prose a user might paste (meeting notes, a report): no quotes or backslashes, so the only
-- JSON escapes are the \n between paragraphs.
local sentences = {
  "The quarterly review covered revenue, churn and the hiring plan for the platform team.",
  "Support tickets about slow exports doubled after the March release and are still open.",
  "Marketing wants the new pricing page live before the conference at the end of the month.",
  "The data team moved the nightly jobs to the new cluster and saw shorter queues overall.",
  "Two customers asked for invoices in euros, which the billing system does not support yet.",
  "Onboarding calls now take forty minutes on average, down from an hour in the last quarter.",
  "The mobile app crashed on older tablets when people opened large shared folders offline.",
  "Legal reviewed the updated terms and asked for a clearer section on data retention periods.",
  "Sales closed eleven new accounts, three of them in the healthcare sector for the first time.",
  "The office move is planned for September, with desks assigned by team rather than by floor.",
}

local body
local head = '{"model":"' .. model .. '",' ..
  (stream and '"stream":true,"stream_options":{"include_usage":true},' or "") ..
  '"messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly."},' ..
  '{"role":"user","content":"'
local ask = "Please summarize the notes above in three short bullet points."
local tail = '"}]}'
local room = math.floor(body_kb * 1024) - #head - #ask - #tail
local parts, size, i = {}, 0, 0
while size < room do
  i = i + 1
  local s = sentences[(i - 1) % #sentences + 1] .. ((i % 5 == 0) and "\\n\\n" or " ")
  parts[#parts + 1] = s
  size = size + #s
end
local text = table.concat(parts)
if #text > room then
  -- Cut on a space so no escape sequence is split.
  text = text:sub(1, math.max(room, 0)):gsub("[^ ]*$", "")
  text = text .. string.rep(" ", room - #text)
end
body = head .. text .. ask .. tail
wrk.body = body
