-- One database per service: no service reads another's tables.
CREATE DATABASE auth;
CREATE DATABASE member;
CREATE DATABASE batch;
