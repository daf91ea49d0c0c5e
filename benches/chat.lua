-- wrk script: POST a ~1 KB chat completion. MODEL and KEY come from the environment.
local model = os.getenv("MODEL") or "flux-fast"
local key = os.getenv("KEY") or ""
local filler = string.rep("lorem ipsum dolor sit amet ", 36)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"You are terse."},' ..
  '{"role":"user","content":"' .. filler .. 'ping"}]}'

-- Any non-2xx answer counts as an error in the summary.
response = function(status, headers, body)
  if status ~= 200 then
    wrk.thread:stop()
  end
end
