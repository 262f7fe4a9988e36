-- A data directory's meshdns.db as written by meshdns before the revisioned store (schema 2):
-- three agent services with TTL checks (one failed, one in maintenance), a catalog node with a
-- service and a pushed check, a service-splitter, a service-intentions entry; one service deregistered.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE records ( kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID;
INSERT INTO records VALUES('check','agent/ttl-0','{"Datacenter":null,"Node":null,"Active":true,"Check":{"Status":"passing","TTL":"1h","CheckID":"ttl-0","Name":"Service ''web'' check","ServiceID":"web-0"},"Agent":true}',1,1);
INSERT INTO records VALUES('check','agent/ttl-1','{"Datacenter":null,"Node":null,"Active":true,"Check":{"Status":"passing","TTL":"1h","CheckID":"ttl-1","Name":"Service ''web'' check","ServiceID":"web-1"},"Agent":true}',2,2);
INSERT INTO records VALUES('check','agent/ttl-2','{"Datacenter":null,"Node":null,"Active":true,"Check":{"Status":"passing","TTL":"1h","CheckID":"ttl-2","Name":"Service ''web'' check","ServiceID":"web-2"},"Agent":true}',3,3);
INSERT INTO records VALUES('check','dc1/ext/ext-alive','{"Datacenter":"dc1","Node":"ext","Active":false,"Check":{"CheckID":"ext-alive","Name":"alive","Notes":"","ServiceID":"ext","Status":"warning","Output":"","Definition":{}}}',6,6);
INSERT INTO records VALUES('check-status','agent/ttl-1','{"Status":"critical","Output":"down"}',4,4);
INSERT INTO records VALUES('node','dc1/ext','{"Datacenter":"dc1","Node":"ext","Address":"127.2.8.8","ID":"","NodeMeta":{},"TaggedAddresses":{}}',6,6);
INSERT INTO records VALUES('service','agent/web-0','{"Datacenter":null,"Node":null,"Maintenance":null,"Service":{"ID":"web-0","Name":"web","Tags":["v1"],"Address":"127.2.0.1","Port":80,"Meta":{},"Weights":{"Passing":1,"Warning":1},"TaggedAddresses":{},"EnableTagOverride":false},"Agent":true}',1,1);
INSERT INTO records VALUES('service','agent/web-1','{"Datacenter":null,"Node":null,"Maintenance":null,"Service":{"ID":"web-1","Name":"web","Tags":["v1"],"Address":"127.2.0.2","Port":80,"Meta":{},"Weights":{"Passing":1,"Warning":1},"TaggedAddresses":{},"EnableTagOverride":false},"Agent":true}',2,2);
INSERT INTO records VALUES('service','agent/web-2','{"Datacenter":null,"Node":null,"Maintenance":"upgrade","Service":{"ID":"web-2","Name":"web","Tags":["v1"],"Address":"127.2.0.3","Port":80,"Meta":{},"Weights":{"Passing":1,"Warning":1},"TaggedAddresses":{},"EnableTagOverride":false},"Agent":true}',3,5);
INSERT INTO records VALUES('service','dc1/ext/ext','{"Datacenter":"dc1","Node":"ext","Maintenance":null,"Service":{"ID":"ext","Name":"ext","Tags":[],"Address":"","Port":1,"Meta":{},"Weights":{"Passing":1,"Warning":1},"TaggedAddresses":{},"EnableTagOverride":false}}',6,6);
INSERT INTO records VALUES('service-intentions','web','{"entry":{"Kind":"service-intentions","Name":"web","Sources":[{"Name":"ext","Action":"deny","Precedence":9,"Type":"consul"}]}}',8,8);
INSERT INTO records VALUES('service-splitter','shop','{"entry":{"Kind":"service-splitter","Name":"shop","Splits":[{"Weight":50.0,"Service":"web"},{"Weight":50.0,"Service":"static"}]}}',7,7);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES('revision',10);
COMMIT;
PRAGMA user_version=2;
