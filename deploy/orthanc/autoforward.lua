-- Orthanc auto-forward to spinegate (Orthanc Lua scripting, "OnStableStudy").
-- Load with "LuaScripts": ["autoforward.lua"] and declare the modality
-- "spinegate" in "DicomModalities" (see deploy/orthanc/orthanc.json).
-- A study becomes stable "StableAge" seconds after its last instance; its MR
-- series are then sent to spinegate. Studies that already hold spinegate's
-- results (a SEG or SR, or any series spinegate made: its key images and PDF
-- report, for a destination that takes only those) are not sent again: when
-- the results arrive the study turns stable a second time, and re-sending
-- would only make duplicates.

local SPINEGATE = 'spinegate'

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local mr = {}
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'SEG' or modality == 'SR' or s['MainDicomTags']['Manufacturer'] == 'spinegate' then
      print('spinegate auto-forward: study ' .. studyId .. ' holds spinegate results, not sent again')
      return
    end
    if modality == 'MR' then
      table.insert(mr, s['ID'])
    end
  end
  if #mr > 0 then
    print('spinegate auto-forward: study ' .. studyId .. ', ' .. #mr .. ' MR series')
    RestApiPost('/modalities/' .. SPINEGATE .. '/store', DumpJson({ Resources = mr, Synchronous = true }, true))
  end
end
