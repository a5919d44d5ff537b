-- Why the store refused an order a buyer had already been told was accepted (its
-- status is then `failed`, its units not counted; the gate gets them back through
-- release_pending like a cancel).
ALTER TABLE orders ADD COLUMN failure TEXT;
