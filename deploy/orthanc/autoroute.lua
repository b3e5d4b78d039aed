-- Orthanc as the PACS in front of Lacuna: every stable MR series is forwarded to Lacuna, which
-- sends its SEG and SR back into the same study. Only MR is forwarded, so Lacuna's own results
-- (modality SEG and SR) never loop back to it.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'MR' then
    SendToModality(seriesId, 'lacuna')
  end
end
