-- Reserved: migration 0007 belongs to another branch (farm identity). This placeholder keeps
-- the numbering without gaps on this branch and is dropped when that branch's 0007 lands.
SELECT 1;
