-- wrk script for benches/soak.sh: POST a ~1 KB chat completion and keep going whatever the
-- answer (wrk counts non-2xx itself). MODEL and KEY come from the environment.
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
