//! modbus
