-- Argo CD health check for kubetune.io/FineTuneJob (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Install it as resource.customizations.health.kubetune.io_FineTuneJob in argocd-cm (docs/gitops.md).
--
-- It reads the kstatus-style conditions the kubetune operator writes:
--   Ready=True        the training Succeeded                               -> Healthy
--   Stalled=True      Failed, invalid spec, or spec changed after start    -> Degraded
--   Suspended=True    spec.suspend is true                                 -> Suspended
--   Reconciling=True  Pending (queued, waiting, pods starting) or Running  -> Progressing
-- and falls back to status.phase when conditions are missing.

local hs = {}

local function find_condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  return fallback
end

local function progress_text(status)
  local p = status.progress
  if p == nil or p.percent == nil then
    return ""
  end
  local text = string.format(" (%.0f%%", p.percent)
  if p.loss ~= nil then
    text = text .. string.format(", loss %.4g", p.loss)
  end
  if p.eta ~= nil and p.eta ~= "" then
    text = text .. ", ETA " .. p.eta
  end
  return text .. ")"
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the FineTuneJob"
  return hs
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation or nil
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local phase = status.phase
local ready = find_condition(conditions, "Ready")
local stalled = find_condition(conditions, "Stalled")
local failed = find_condition(conditions, "Failed")
local suspended = find_condition(conditions, "Suspended")
local reconciling = find_condition(conditions, "Reconciling")

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled, "The FineTuneJob cannot make progress")
  return hs
end
if is_true(failed) or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(failed, "Training failed")
  return hs
end
if is_true(suspended) or phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(suspended, "spec.suspend is true")
  return hs
end
if is_true(ready) or phase == "Succeeded" then
  hs.status = "Healthy"
  local where = ""
  if status.artifacts ~= nil and status.artifacts.adapterUri ~= nil then
    where = "; adapter at " .. status.artifacts.adapterUri
  end
  hs.message = "Training succeeded" .. where
  return hs
end

hs.status = "Progressing"
if is_true(reconciling) then
  hs.message = (phase or "Pending") .. ": " .. describe(reconciling, "in progress") .. progress_text(status)
else
  hs.message = (phase or "Pending") .. progress_text(status)
end
return hs
